// imgsearch web page: search box, result grid, detail view with the explanation heatmap.
// Plain ES modules (api.js, dom.js, heatmap.js beside this one), no build step. Every node is
// built with createElement/textContent: paths and labels are data and may hold markup (a folder
// can be named "<script>").

import { api, ApiError } from "./api.js";
import { baseName, el, fmt, formatBytes, formatDate, parentName, percent } from "./dom.js";
import { drawHeatmap } from "./heatmap.js";

const PAGE_SIZE = 24;
const $ = (id) => document.getElementById(id);

const els = {
  form: $("search-form"), q: $("q"), file: $("file"),
  queryPhoto: $("query-photo"), queryPhotoImg: $("query-photo-img"),
  queryPhotoLabel: $("query-photo-label"), queryPhotoClear: $("query-photo-clear"),
  filters: $("filters"), filterCount: $("filter-count"), filtersClear: $("filters-clear"),
  folder: $("folder"), after: $("after"), before: $("before"), min: $("min"),
  error: $("error"), warning: $("warning"), status: $("status"), timings: $("timings"), empty: $("empty"),
  grid: $("grid"), loadMore: $("load-more"), drop: $("drop"),
  detail: $("detail"), detailImg: $("detail-img"), heatmap: $("heatmap"),
  detailPos: $("detail-pos"), detailPath: $("detail-path"), facts: $("detail-facts"),
  explain: $("explain"), words: $("words"), explainNote: $("explain-note"),
  prev: $("prev"), next: $("next"), close: $("close"),
  detailLike: $("detail-like"), detailOpen: $("detail-open"),
};

// The current search. query: {kind: "text", text} | {kind: "like", id, name} | {kind: "image", upload, name}
// A touch screen (no hover, a coarse pointer): no keyboard or mouse hints, "tap" for "click".
const TOUCH = window.matchMedia("(hover: none) and (pointer: coarse)").matches;
if (TOUCH) document.documentElement.classList.add("touch");
const CONFIDENT_LABEL = 0.5; // the least probability at which the detail view names a class

const state = { query: null, filters: {}, items: [], nextCursor: null, timings: null, reranked: false, warnings: [],
                good: null, detail: -1, word: null };
const uploads = new Map(); // upload number --> {file, url}: photo queries are kept for back/forward
let uploadCount = 0;
let inflight = null; // AbortController of the running search
let detailEntry = false; // the open photo has a history entry of its own
let skipPop = false; // the next popstate is the photo's entry going: nothing to do
const explanations = new Map(); // "id\nquery" --> Promise of the explanation JSON

// ---------- URL <--> state ----------

const FILTER_PARAMS = { folder: "folder", after: "taken_after", before: "taken_before", min: "min_score" };

function readFilters() {
  return { folder: els.folder.value.trim(), after: els.after.value, before: els.before.value, min: els.min.value.trim() };
}

function showFilters(filters) {
  for (const name of Object.keys(FILTER_PARAMS)) els[name].value = filters[name] || "";
  const count = Object.values(filters).filter(Boolean).length;
  els.filterCount.textContent = count ? ` (${count})` : "";
  if (count) els.filters.open = true;
}

function urlFor(query, filters) {
  const params = new URLSearchParams();
  if (query && query.kind === "text") params.set("q", query.text);
  if (query && query.kind === "like") params.set("like", String(query.id));
  for (const name of Object.keys(FILTER_PARAMS)) if (filters[name]) params.set(name, filters[name]);
  const search = params.toString();
  return search ? `?${search}` : location.pathname;
}

function fromLocation(historyState) {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const name of Object.keys(FILTER_PARAMS)) filters[name] = params.get(name) || "";
  let query = null;
  if (params.get("q")) query = { kind: "text", text: params.get("q") };
  else if (params.get("like")) query = { kind: "like", id: params.get("like"), name: historyState && historyState.name };
  else if (historyState && historyState.upload && uploads.has(historyState.upload)) {
    query = { kind: "image", upload: historyState.upload, name: historyState.name };
  }
  return { query, filters };
}

function historyStateFor(query) {
  if (!query) return null;
  if (query.kind === "image") return { upload: query.upload, name: query.name };
  if (query.kind === "like") return { name: query.name };
  return null;
}

// ---------- searching ----------

function requestFor(query, filters, cursor) {
  const fields = { k: PAGE_SIZE };
  for (const [name, param] of Object.entries(FILTER_PARAMS)) if (filters[name]) fields[param] = filters[name];
  if (filters.min) fields.min_score = Number(filters.min) / 100; // the field is in percent
  if (cursor) fields.cursor = cursor;
  if (query.kind === "image") {
    const form = new FormData();
    form.append("image", uploads.get(query.upload).file, query.name || "photo");
    for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
    return { method: "POST", body: form };
  }
  if (query.kind === "text") fields.query = query.text;
  else fields.like = Number(query.id);
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(fields) };
}

// Start a new search (history: "push" for the user's own searches, "replace" on load, "none" on back/forward).
async function search(query, filters, history = "push") {
  // A search from the photo's view ("More like this") takes the place of the photo's history entry.
  const fromDetail = detailEntry;
  detailEntry = false;
  closeDetail();
  state.query = query;
  state.filters = filters;
  showQuery(query);
  showFilters(filters);
  const url = urlFor(query, filters);
  const historyState = historyStateFor(query);
  const unchanged = new URL(url, location.href).href === location.href
    && JSON.stringify(historyState) === JSON.stringify(window.history.state);
  if (history === "push" && fromDetail) {
    window.history.replaceState(historyState, "", url);
  } else if (history === "push" && !unchanged) { // the same search again adds no history entry
    window.history.pushState(historyState, "", url);
  } else if (history === "replace") {
    window.history.replaceState(historyState, "", url);
  }
  state.items = [];
  state.nextCursor = null;
  state.timings = null;
  state.word = null; // a new query has its own words
  if (!query) { render(); await fetchLibrary(null); return; }
  await fetchPage(null);
}

// The start page is the library: the photos, newest first, a page at a time (GET api/browse).
// One page of photos from the API at a time: a newer request aborts the one in flight. The
// answer's items join the list (a first page replaces it); `took` reads the rest of the answer,
// `failed` gets a failure as a sentence.
async function fetchInto(url, options, cursor, took, failed) {
  if (inflight) inflight.abort();
  const controller = new AbortController();
  inflight = controller;
  els.loadMore.disabled = true;
  try {
    const page = await api(url, { ...options, signal: controller.signal });
    if (controller !== inflight) return;
    state.items = cursor ? state.items.concat(page.items) : page.items;
    state.nextCursor = page.next_cursor ?? null;
    took(page);
    render(cursor ? page.items.length : null);
  } catch (error) {
    if (error.name === "AbortError" || controller !== inflight) return;
    failed(error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`);
  } finally {
    if (controller === inflight) {
      inflight = null;
      document.body.classList.remove("busy");
      els.loadMore.disabled = false;
    }
  }
}

function fetchLibrary(cursor) {
  const params = new URLSearchParams({ k: String(PAGE_SIZE * 2) });
  for (const [name, param] of Object.entries(FILTER_PARAMS)) if (state.filters[name] && name !== "min") params.set(param, state.filters[name]);
  if (cursor) params.set("cursor", cursor);
  return fetchInto(`api/browse?${params}`, {}, cursor, () => {}, showError);
}

function fetchPage(cursor) {
  const { query, filters } = state;
  showError(null);
  document.body.classList.add("busy");
  els.status.textContent = cursor ? "Loading more…" : "Searching…";
  return fetchInto("api/search", requestFor(query, filters, cursor), cursor, (page) => {
    state.timings = page.timings_ms || null;
    state.reranked = page.reranked;
    state.warnings = page.warnings || [];
    // good_matches counts every result past the filters, not just this page's: the first page's stands
    if (!cursor) state.good = page.good_threshold == null ? null
      : { count: page.good_matches, complete: page.good_matches_complete, threshold: page.good_threshold };
  }, (message) => {
    if (query.kind === "image") message = `Could not search with ${query.name || "that photo"}: ${message}`;
    showError(message);
    if (!cursor) { state.items = []; state.nextCursor = null; state.timings = null; state.warnings = []; render(); }
    els.status.textContent = "";
  });
}

function showError(message) {
  els.error.hidden = !message;
  els.error.textContent = message || "";
}

// ---------- rendering the page ----------

function showQuery(query) {
  if (!query || query.kind === "text") {
    els.queryPhoto.hidden = true;
    els.queryPhotoImg.removeAttribute("src");
    els.q.value = query ? query.text : "";
    return;
  }
  els.q.value = "";
  els.queryPhoto.hidden = false;
  if (query.kind === "image") {
    els.queryPhotoImg.src = uploads.get(query.upload).url;
    els.queryPhotoLabel.textContent = query.name ? `Like ${query.name}` : "Like your photo";
  } else {
    els.queryPhotoImg.src = `api/images/${encodeURIComponent(query.id)}/thumbnail`;
    els.queryPhotoLabel.textContent = query.name ? `Like ${query.name}` : `Like photo #${query.id}`;
    if (!query.name) nameLikeSource(query);
  }
  els.queryPhotoImg.alt = els.queryPhotoLabel.textContent;
}

// A "more like this" URL opened afresh knows only the id: ask the API for the photo's name.
async function nameLikeSource(query) {
  try {
    const info = await api(`api/images/${encodeURIComponent(query.id)}/info`);
    query.name = baseName(info.path);
    if (state.query === query) {
      els.queryPhotoLabel.textContent = `Like ${query.name}`;
      els.queryPhotoImg.alt = els.queryPhotoLabel.textContent;
    }
  } catch { /* the id is gone: the search itself says so */ }
}

function describeQuery(query) {
  if (query.kind === "text") return `for “${query.text}”`;
  return query.name ? `like ${query.name}` : "like this one";
}

function render(appended = null) {
  const { query, items } = state;
  els.empty.hidden = Boolean(query);
  els.empty.classList.toggle("compact", !query && items.length > 0); // photos first, the intro small
  if (appended === null) els.grid.replaceChildren();
  const start = appended === null ? 0 : items.length - appended;
  items.slice(start).forEach((item, i) => {
    const index = start + i;
    if (isWeak(item) && (index === 0 || !isWeak(items[index - 1]))) {
      els.grid.append(el("li", { class: "divider", text: index === 0 ? "No good matches. The closest:" : "Weaker matches" }));
    }
    els.grid.append(card(item, index));
  });
  els.loadMore.hidden = !state.nextCursor;
  const warnings = (query && state.warnings) || [];
  els.warning.textContent = warnings.join(" ");
  els.warning.hidden = !warnings.length;
  if (!query) { // the library
    els.status.textContent = items.length ? "Your photos, newest first (date taken, else the file's date)" : "";
    els.timings.textContent = "";
    return;
  }
  if (!items.length) {
    const filtered = Object.values(state.filters).some(Boolean);
    els.status.textContent = `No photos ${describeQuery(query)}.` +
      (filtered ? " Try removing a filter (folder, dates, match %)." : " Try other words.");
  } else {
    const count = `${items.length}${state.nextCursor ? "+" : ""} ${items.length === 1 ? "photo" : "photos"}`;
    const weaker = items.filter(isWeak).length;
    els.status.textContent = state.good
      ? `${goodText(state.good)} ${describeQuery(query)}${weaker ? `; ${weaker}${state.nextCursor ? "+" : ""} weaker` : ""}`
      : `${count} ${describeQuery(query)}`;
  }
  els.timings.textContent = timingsText(state.timings, state.reranked);
}

function timingsText(t, pageReranked) {
  if (!t) return "";
  const parts = [["encode", "encode"], ["vector_search", "vector search"], ["first_stage", "first stage"], ["rerank", "re-rank"]]
    .filter(([key]) => t[key] !== undefined && t[key] !== null && (key !== "rerank" || pageReranked))
    .map(([key, name]) => `${name} ${fmt(t[key], 1)}`);
  return `${fmt(t.total, 1)} ms` + (parts.length ? ` (${parts.join(" · ")} ms)` : "");
}

const isReranked = (item) => item.rerank_score !== null && item.rerank_score !== undefined;
const textQuery = () => Boolean(state.query && state.query.kind === "text");
const hasRelevance = (item) => item.relevance !== null && item.relevance !== undefined;
const isWeak = (item) => Boolean(state.good) && hasRelevance(item) && item.relevance < state.good.threshold;

// "3 good matches" / "No good matches"; the rest of the list are weaker ones.
function goodText(good) {
  if (!good.count) return "No good matches";
  const count = `${good.count}${good.complete ? "" : "+"}`;
  return `${count} good ${good.count === 1 ? "match" : "matches"}`;
}

// One number a person can read: how likely the photo is to match (the model's score, calibrated
// on captioned photos it never trained on). A model without calibration shows its raw score.
function scoreText(item) {
  if (hasRelevance(item)) return `${percent(item.relevance)} match`;
  if (isReranked(item)) return `score ${fmt(item.score, 2)}`;
  return `score ${fmt(item.first_stage_score, 3)}`;
}

// Near-duplicates (the same photo at another size, a copy) folded into this one: " · +1 copy".
function copiesText(item) {
  const count = (item.near_duplicates || []).length;
  return count ? ` · +${count} ${count === 1 ? "copy" : "copies"}` : "";
}

function scoreTitle(item) {
  if (hasRelevance(item)) return "Estimated chance that this photo matches (details: open the photo)";
  return "This model has no calibration: its raw score";
}

function card(item, index) {
  const name = baseName(item.path);
  const folder = parentName(item.path);
  const img = el("img", { src: item.thumbnail_url, alt: name, loading: "lazy", decoding: "async" });
  if (item.width && item.height) { img.width = item.width; img.height = item.height; }
  return el("li", { class: isWeak(item) ? "card weak" : "card", dataset: { id: String(item.id), path: item.path, rank: String(item.rank) } },
    el("button", { type: "button", class: "thumb", title: item.path, "aria-label": `Open ${name} (result ${index + 1})`,
                   onclick: () => openDetail(index) }, img),
    el("div", { class: "meta" },
      el("div", { class: "name", title: item.path }, el("span", { class: "file", text: name }),
         folder ? el("span", { class: "folder", text: ` in ${folder}` }) : null),
      item.score === undefined
        ? el("div", { class: "scores", text: formatDate(item.taken_at || item.file_date) + copiesText(item) })
        : el("div", { class: "scores", text: scoreText(item) + copiesText(item), title: scoreTitle(item) })),
    el("button", { type: "button", class: "like quiet", text: "More like this", onclick: () => moreLike(item) }));
}

function moreLike(item) {
  search({ kind: "like", id: item.id, name: baseName(item.path) }, state.filters);
  els.q.focus();
}

function photoQuery(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image: drop a photo (JPEG, PNG, WebP, ...).`);
    return;
  }
  uploadCount += 1;
  uploads.set(uploadCount, { file, url: URL.createObjectURL(file) });
  for (const old of [...uploads.keys()].filter((n) => n <= uploadCount - 10)) { // keep the last 10 for back/forward
    URL.revokeObjectURL(uploads.get(old).url);
    uploads.delete(old);
  }
  search({ kind: "image", upload: uploadCount, name: file.name || null }, readFilters());
}

// ---------- the detail view ----------

function openDetail(index) {
  const item = state.items[index];
  if (!item) return;
  state.detail = index;
  const name = baseName(item.path);
  els.detailImg.src = item.thumbnail_url; // shown at once, replaced by the original when it has loaded
  els.detailImg.alt = name;
  if (item.image_url) {
    const full = new Image();
    full.onload = () => { if (state.items[state.detail] === item) els.detailImg.src = item.image_url; };
    full.src = item.image_url;
  }
  els.heatmap.hidden = true;
  els.detailPos.textContent = `${index + 1} of ${state.items.length}${state.nextCursor ? "+" : ""}`;
  els.prev.disabled = index === 0;
  els.next.disabled = index === state.items.length - 1 && !state.nextCursor;
  // Break the path after a folder separator, not inside a name: a <wbr> after each "/".
  const parts = item.path.split("/");
  els.detailPath.replaceChildren(...parts.flatMap((part, i) => (i < parts.length - 1 ? [`${part}/`, el("wbr")] : [part])));
  els.detailPath.title = item.path;
  els.facts.replaceChildren(...facts(item));
  if (item.image_url) els.detailOpen.href = item.image_url; else els.detailOpen.removeAttribute("href");
  els.detail.dataset.id = String(item.id);
  showExplanation(item);
  if (!els.detail.open) {
    els.detail.showModal();
    // An open photo is a history entry, as in photo apps: Back (a phone's too) closes it and keeps the search.
    window.history.pushState({ ...(window.history.state || {}), detail: true }, "", location.href);
    detailEntry = true;
  }
  fitImage();
}

// The photo as large as the figure allows (small photos are enlarged, at most 3x their own
// size); its aspect comes from the loaded image, which the browser has turned upright (EXIF).
function fitImage() {
  const img = els.detailImg;
  const item = state.items[state.detail];
  if (!els.detail.open || !item || !img.naturalWidth) return;
  const figure = img.closest(".detail-figure");
  const style = getComputedStyle(figure);
  const padX = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
  const padY = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
  const narrow = window.matchMedia("(max-width: 720px)").matches;
  const boxW = figure.clientWidth - padX;
  const boxH = narrow ? window.innerHeight * 0.6 : figure.clientHeight - padY;
  const longest = Math.max(item.width || 0, item.height || 0, img.naturalWidth, img.naturalHeight);
  const scale = Math.min(boxW / img.naturalWidth, boxH / img.naturalHeight,
                         (3 * longest) / Math.max(img.naturalWidth, img.naturalHeight));
  img.style.width = `${Math.floor(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.floor(img.naturalHeight * scale)}px`;
}

function facts(item) {
  const rows = [];
  const add = (term, value) => { if (value !== null && value !== undefined && value !== "") rows.push(el("dt", { text: term }), el("dd", { text: value })); };
  if (item.score !== undefined && hasRelevance(item)) {
    add("Match", `${percent(item.relevance)} likely${isWeak(item) ? " (a weaker match)" : " (a good match)"}`);
  }
  // "Taken" only from the photo's own (EXIF) date; a file's date says when it was copied or saved.
  if (item.taken_at) add("Taken", formatDate(item.taken_at));
  else add("File date", formatDate(item.file_date));
  const pixels = item.width && item.height ? `${item.width} × ${item.height} px` : null;
  add("Size", [pixels, formatBytes(item.size)].filter(Boolean).join(", "));
  const copies = item.near_duplicates || [];
  if (copies.length) add(copies.length === 1 ? "Near-duplicate" : "Near-duplicates", copies.map((copy) => copy.path).join("\n"));
  if (item.score !== undefined) { // a search result; the library's photos have no score
    // the model's raw scores, for the curious (the relevance above is what they mean)
    if (!isReranked(item)) {
      add(textQuery() ? "Raw score (first stage)" : "Raw score (cosine)", fmt(item.first_stage_score, 3));
    } else {
      add("Raw score", fmt(item.score, 2));
      add("First stage", `${fmt(item.first_stage_score, 3)} (rank ${item.first_stage_rank})`);
    }
    add("Rank", String(item.rank));
  }
  // The ImageNet classifier's guesses, only those it is fairly sure of (the cards show none: a
  // wrong class name on a photo, "dalmatian" on a black dog, costs more trust than it gives).
  const sure = (item.labels || []).filter((label) => label.score >= CONFIDENT_LABEL);
  if (sure.length) {
    const list = el("ul", { class: "labels" });
    for (const label of sure) list.append(el("li", { text: `${label.label.split(",")[0]} ${percent(label.score)}` }));
    rows.push(el("dt", { text: "Classifier's guess" }), el("dd", {}, list));
  }
  return rows;
}

function closeDetail() {
  if (els.detail.open) els.detail.close();
}

async function moveDetail(step) {
  const target = state.detail + step;
  if (target < 0) return;
  if (target >= state.items.length) {
    if (!state.nextCursor || inflight) return;
    await fetchPage(state.nextCursor);
    if (target >= state.items.length) return;
  }
  openDetail(target);
  const thumb = els.grid.children[target] && els.grid.children[target].querySelector(".thumb");
  if (thumb) thumb.scrollIntoView({ block: "nearest" });
}

function explanationFor(item, text) {
  const key = `${item.id}\n${text}`;
  if (!explanations.has(key)) {
    const url = `api/images/${encodeURIComponent(item.id)}/explain?query=${encodeURIComponent(text)}`;
    const promise = api(url);
    promise.catch(() => explanations.delete(key)); // a failure is not remembered
    explanations.set(key, promise);
  }
  return explanations.get(key);
}

async function showExplanation(item) {
  const query = state.query;
  els.words.replaceChildren();
  els.explainNote.textContent = "";
  els.explain.hidden = !query || query.kind !== "text";
  if (els.explain.hidden) return;
  els.explainNote.textContent = "Reading the match…";
  let explanation;
  try {
    explanation = await explanationFor(item, query.text);
  } catch (error) {
    if (state.items[state.detail] === item) els.explainNote.textContent = `No explanation: ${error.message}`;
    return;
  }
  if (state.items[state.detail] !== item || state.query !== query) return; // moved on meanwhile
  els.explainNote.textContent = "";
  const words = explanation.words || [];
  if (!words.length) { els.explainNote.textContent = "The model gave no per-word weights for this query."; return; }
  words.forEach((word, i) => {
    els.words.append(el("button", {
      type: "button", class: "word", text: word.word, "aria-pressed": "false", dataset: { word: String(i) },
      onclick: () => selectWord(item, explanation, state.word === i ? null : i),
    }));
  });
  // Keep the chosen word while moving between results, when this query has it too.
  selectWord(item, explanation, state.word !== null && state.word < words.length ? state.word : null);
}

function selectWord(item, explanation, index) {
  state.word = index;
  for (const chip of els.words.children) chip.setAttribute("aria-pressed", String(chip.dataset.word === String(index)));
  if (index === null) {
    els.heatmap.hidden = true;
    delete els.heatmap.dataset.word;
    els.explainNote.textContent = "";
    return;
  }
  const word = explanation.words[index];
  drawHeatmap(els.heatmap, word.weights, explanation.grid,
              (els.detailImg.naturalHeight || 1) / (els.detailImg.naturalWidth || 1));
  els.heatmap.dataset.word = word.word;
  els.heatmap.hidden = false;
  els.explainNote.textContent = `Brighter areas matched “${word.word}” more${classNote(word)}. ${TOUCH ? "Tap" : "Click"} it again to hide.`;
}

// "classes" explanations name the ImageNet classes nearest the word: the map shows where the
// classifier sees them.
function classNote(word) {
  const nearest = (word.classes || [])[0];
  if (!nearest) return "";
  const name = nearest.label.split(",")[0].trim();
  return ` (the nearest class it knows: “${name}”)`;
}

// ---------- events ----------

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.q.value.trim();
  const filters = readFilters();
  els.filters.open = false; // Apply: the panel closes (on a phone it covers much of the screen)
  if (text) search({ kind: "text", text }, filters);
  else if (state.query && state.query.kind !== "text") search(state.query, filters);
  else if (!state.query && Object.values(filters).some(Boolean)) search(null, filters); // the library, filtered
  else { showError("Type what you are looking for, or drop a photo on the page."); els.q.focus(); }
});

els.filtersClear.addEventListener("click", () => {
  showFilters({});
  if (state.query) search(state.query, {});
});

els.file.addEventListener("change", () => {
  photoQuery(els.file.files[0]);
  els.file.value = ""; // the same file again is a new search
});

// A photo the browser cannot show (not an image after all): no broken-image icon; the API's message says why.
els.queryPhotoImg.addEventListener("error", () => { els.queryPhotoImg.hidden = true; });
els.queryPhotoImg.addEventListener("load", () => { els.queryPhotoImg.hidden = false; });
els.queryPhotoClear.addEventListener("click", () => { search(null, state.filters); els.q.focus(); });
els.loadMore.addEventListener("click", () => {
  if (state.nextCursor) (state.query ? fetchPage : fetchLibrary)(state.nextCursor);
});

window.addEventListener("popstate", (event) => {
  if (skipPop) { skipPop = false; return; } // the photo's entry, taken off when the photo closed
  if (els.detail.open) { detailEntry = false; closeDetail(); return; } // Back closes the photo
  const { query, filters } = fromLocation(event.state);
  search(query, filters, "none");
});

document.addEventListener("keydown", (event) => {
  if (els.detail.open) {
    if (event.key === "ArrowLeft") { event.preventDefault(); moveDetail(-1); }
    else if (event.key === "ArrowRight") { event.preventDefault(); moveDetail(1); }
    return; // Esc: the dialog closes itself
  }
  const typing = event.target.closest && event.target.closest("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    els.q.focus();
    els.q.select();
  }
});

// Swipe left or right on the photo: the next or previous result, as photo apps do.
let touchStart = null;
els.detailImg.closest(".detail-figure").addEventListener("touchstart", (event) => {
  touchStart = event.touches.length === 1 ? { x: event.touches[0].clientX, y: event.touches[0].clientY } : null;
}, { passive: true });
els.detailImg.closest(".detail-figure").addEventListener("touchend", (event) => {
  if (!touchStart || event.changedTouches.length !== 1) return;
  const dx = event.changedTouches[0].clientX - touchStart.x;
  const dy = event.changedTouches[0].clientY - touchStart.y;
  touchStart = null;
  if (Math.abs(dx) >= 50 && Math.abs(dx) > 2 * Math.abs(dy)) moveDetail(dx < 0 ? 1 : -1);
});

els.detailImg.addEventListener("load", fitImage);
window.addEventListener("resize", fitImage);
els.prev.addEventListener("click", () => moveDetail(-1));
els.next.addEventListener("click", () => moveDetail(1));
els.close.addEventListener("click", closeDetail);
els.detail.addEventListener("click", (event) => { if (event.target === els.detail) closeDetail(); }); // the backdrop
els.detail.addEventListener("close", () => {
  if (detailEntry) { // closed on the page (Esc, ×, the backdrop): its history entry goes too
    detailEntry = false;
    skipPop = true;
    window.history.back();
  }
  const thumb = els.grid.children[state.detail] && els.grid.children[state.detail].querySelector(".thumb");
  if (thumb) thumb.focus();
});
els.detailLike.addEventListener("click", () => {
  const item = state.items[state.detail];
  if (item) moreLike(item);
});

// Drag and drop a photo anywhere; paste one too.
let dragDepth = 0;
const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
document.addEventListener("dragenter", (event) => { if (!hasFiles(event)) return; dragDepth += 1; els.drop.hidden = false; });
document.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
document.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) els.drop.hidden = true; });
document.addEventListener("drop", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  els.drop.hidden = true;
  photoQuery(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
  if (file) { event.preventDefault(); photoQuery(file); }
});

// ---------- start ----------

async function start() {
  const { query, filters } = fromLocation(window.history.state);
  search(query, filters, "replace");
  try {
    const health = await api("api/health");
    const note = el("p", { class: "hint", id: "collection" });
    note.textContent = health.images
      ? `Searching ${health.images.toLocaleString()} ${health.images === 1 ? "photo" : "photos"}.`
      : "The index holds no photos yet: run `imgsearch index ~/Pictures`, then reload this page.";
    els.empty.append(note);
  } catch (error) {
    if (!state.query) showError(error.message);
  }
}

start();
