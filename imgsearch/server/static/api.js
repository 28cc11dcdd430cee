// Calls to the imgsearch API (docs/api.md): JSON in and out; a failed call throws ApiError
// with the API's own message (its `detail`).

export class ApiError extends Error {}

function detailMessage(body, response) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) { // FastAPI's 422: [{loc, msg}]
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return `The server answered ${response.status} ${response.statusText || ""}`.trim();
}

export async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Could not reach the imgsearch server. Is `imgsearch serve` still running?");
  }
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the message below says the status */ }
  if (!response.ok) throw new ApiError(detailMessage(body, response));
  return body;
}
