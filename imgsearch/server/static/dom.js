// Building the page's nodes and the text it shows. Data only ever becomes text (textContent)
// or attribute values: never markup.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export const baseName = (path) => path.split(/[\\/]/).filter(Boolean).pop() || path;
export const parentName = (path) => { const parts = path.split(/[\\/]/).filter(Boolean); return parts.length > 1 ? parts[parts.length - 2] : ""; };
export const fmt = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
export const percent = (p) => `${Math.round(p * 100)}%`;

export function formatDate(iso) {
  if (!iso) return null;
  const date = new Date(iso); // ISO text without a zone: camera wall-clock time, shown as is
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function formatBytes(n) {
  if (!n && n !== 0) return null;
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
