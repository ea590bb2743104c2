// clip_lab search page: one query, sent to one or two models, results side by side. No build step, no library.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], query: null };

// one element with text content (never innerHTML: every string here may come from a user or a dataset)
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  const timing = (response.headers.get("Server-Timing") || "").match(/dur=([\d.]+)/g) || [];
  body.ms = timing.reduce((sum, t) => sum + parseFloat(t.slice(4)), 0);
  return body;
}

const enc = encodeURIComponent;
const thumb = (model, id, size = 256) => `/api/models/${enc(model)}/gallery/${id}/thumbnail?size=${size}`;

function message(text) {
  $("message").hidden = !text;
  $("message").textContent = text || "";
}

// -- models and panes ------------------------------------------------------------------------------------------------
function activeModels() {
  const right = $("right").value;
  return [$("left").value, ...(right && right !== $("left").value ? [right] : [])];
}

function describe(m) {
  return `${m.split}, ${m.images} images, ${m.captions} captions, ${m.index.kind} index on ${m.device}`;
}

function buildPanes() {
  const panes = $("panes");
  panes.replaceChildren();
  const names = activeModels();
  panes.classList.toggle("two", names.length === 2);
  for (const name of names) {
    const pane = $("pane").content.firstElementChild.cloneNode(true);
    const info = state.models.find((m) => m.name === name);
    pane.dataset.model = name;
    pane.querySelector(".name").textContent = name;
    pane.querySelector(".about").textContent = describe(info);
    panes.append(pane);
  }
  return [...panes.children];
}

// -- results ---------------------------------------------------------------------------------------------------------
function card(model, match, isTrue) {
  const [first, ...more] = match.captions;
  const item = el(
    "li",
    { class: "card" + (isTrue ? " true" : ""), tabindex: "0", role: "button", "data-image-id": match.image_id,
      title: match.file_name, "aria-label": `#${match.rank}: ${first || match.file_name}`,
      onclick: () => showDetail(model, match),
      onkeydown: (e) => {
        // the card's own keys only (not its folded captions'); the default would also press the dialog's button
        if (e.target === e.currentTarget && (e.key === "Enter" || e.key === " ")) {
          e.preventDefault();
          showDetail(model, match);
        }
      } },
    el("img", { src: thumb(model, match.image_id), alt: first || match.file_name, loading: "lazy" }),
    el("div", { class: "meta" }, el("span", { class: "rank" }, `#${match.rank}`),
      el("span", { class: "score" }, match.score.toFixed(3))),
    el("p", {}, first || "(no caption)"),
  );
  if (isTrue) item.append(el("span", { class: "badge" }, "✓ true image"));
  if (more.length) {
    item.append(el("details", { onclick: (e) => e.stopPropagation() },
      el("summary", {}, `${more.length} more caption${more.length > 1 ? "s" : ""}`),
      el("ul", {}, ...more.map((c) => el("li", {}, c)))));
  }
  return item;
}

function showImages(pane, result) {
  const model = pane.dataset.model;
  const truth = new Set(result.true_image_ids || []);
  pane.querySelector(".grid").replaceChildren(
    ...result.results.map((m) => card(model, m, truth.has(m.image_id))));
  const status = pane.querySelector(".status");
  const parts = [`${describeQuery(state.query)}: top ${result.k} of ${result.gallery_size} images`,
    `${result.ms.toFixed(1)} ms`];
  if (truth.size) {
    const found = result.results.find((m) => truth.has(m.image_id));
    parts.push(found ? `true image at #${found.rank}` : `true image not in the top ${result.k}`);
  }
  status.replaceChildren(parts.join(" · "));
  if (result.unknown_words && result.unknown_words.length) {
    status.append(el("span", { class: "warn" },
      ` · not in the vocabulary (read as unknown): ${result.unknown_words.join(", ")}`));
  }
}

function showCaptions(list, result, ownId) {
  list.hidden = false;
  list.replaceChildren(...result.results.map((c) =>
    el("li", { class: c.image_id === ownId ? "own" : "" },
      el("span", { class: "score" }, c.score.toFixed(3)), el("span", { class: "text" }, c.caption))));
}

function showClasses(box, result) {
  const probs = Object.entries(result.result.probabilities).sort((a, b) => b[1] - a[1]);
  const predicted = result.result.predicted;
  const title = predicted ? `zero-shot: ${predicted}` : `zero-shot: tie of ${result.result.tied.join(", ")}`;
  box.append(el("div", { class: "bars" }, el("strong", {}, title),
    ...probs.map(([name, p]) => el("div", { class: "bar" + (name === predicted ? " top" : "") },
      el("span", { title: name }, name),
      el("span", {}, el("div", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
      el("span", {}, p.toFixed(3))))));
}

function failed(pane, error) {
  pane.querySelector(".status").replaceChildren(el("span", { class: "warn" }, error.message));
}

// -- queries ---------------------------------------------------------------------------------------------------------
function k() {
  const value = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 10));
  $("k").value = value;
  return value;
}

async function run(query) {
  state.query = query;
  if (query.kind !== "text") $("text").value = "";  // the box says what was asked: not an earlier text
  message("");
  $("go").disabled = true;
  const panes = buildPanes();
  try {
    await Promise.all(panes.map((pane) => runPane(pane, query)));
  } finally {
    $("go").disabled = false;
  }
  // the address holds a text query only: an image query cannot be written into a link
  const params = new URLSearchParams({ text: query.text, k: k(), left: $("left").value, right: $("right").value });
  history.replaceState(null, "", query.kind === "text" ? "#" + params : location.pathname);
}

function describeQuery(query) {
  if (query.kind === "text") return `"${query.text}"`;
  if (query.kind === "image") return `images like image ${query.imageId}`;
  return `the uploaded ${query.file.name || "image"}`;
}

async function runPane(pane, query) {
  const base = `/api/models/${enc(pane.dataset.model)}`;
  pane.querySelector(".status").textContent = "searching…";
  try {
    if (query.kind === "text") {
      showImages(pane, await api(`${base}/images?text=${enc(query.text)}&k=${k()}`));
    } else if (query.kind === "image") {
      const [images, captions] = await Promise.all([
        api(`${base}/images?image_id=${query.imageId}&k=${k()}`),
        api(`${base}/captions?image_id=${query.imageId}&k=5&distinct=true`),
      ]);
      const box = pane.querySelector(".upload");
      box.hidden = false;
      box.replaceChildren(el("img", { src: thumb(pane.dataset.model, query.imageId), alt: "query image" }));
      showCaptions(pane.querySelector(".captions"), captions, query.imageId);
      showImages(pane, images);
    } else {
      const send = { method: "POST", body: query.file, headers: { "Content-Type": query.file.type || "image/jpeg" } };
      const classes = query.classes.map((c) => `classes=${enc(c)}`).join("&");
      const [images, captions, classified] = await Promise.all([
        api(`${base}/images?k=${k()}`, send),
        api(`${base}/captions?k=5&distinct=true`, send),
        // a bad class list costs the classes only, never the images and captions
        classes ? api(`${base}/classify?${classes}`, send).catch((error) => ({ error })) : null,
      ]);
      const box = pane.querySelector(".upload");
      box.hidden = false;
      box.replaceChildren(el("img", { src: query.url, alt: "uploaded image" }));
      if (classified && classified.error) box.append(el("p", { class: "warn" }, classified.error.message));
      else if (classified) showClasses(box, classified);
      showCaptions(pane.querySelector(".captions"), captions, null);
      showImages(pane, images);
    }
  } catch (error) {
    failed(pane, error);
  }
}

function upload(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    message(`${file.name} is not an image`);
    return;
  }
  const classes = $("classes").value.split(",").map((c) => c.trim()).filter(Boolean);
  if (classes.length === 1) {
    message("zero-shot needs two or more classes, separated by commas");
    return;
  }
  if (state.query && state.query.url && state.query.file !== file) URL.revokeObjectURL(state.query.url);
  const url = state.query && state.query.file === file ? state.query.url : URL.createObjectURL(file);
  run({ kind: "upload", file, url, classes });
}

// -- the detail view of one result -----------------------------------------------------------------------------------
async function showDetail(model, match) {
  const body = $("detail-body");
  const top = el("ol", { class: "detail-captions" }, el("li", {}, "…"));
  body.replaceChildren(
    el("div", {}, el("img", { src: thumb(model, match.image_id, 512), alt: match.captions[0] || match.file_name }),
      el("p", {}, `image ${match.image_id} · ${match.file_name}`),
      el("button", { class: "similar", type: "button",
        onclick: () => { $("detail").close(); run({ kind: "image", imageId: match.image_id }); } },
        "Images like this one")),
    el("div", {}, el("h3", {}, "its captions"), el("ul", {}, ...match.captions.map((c) => el("li", {}, c))),
      el("h3", {}, `${model}'s top captions for it`), top),
  );
  $("detail").showModal();
  try {
    const result = await api(`/api/models/${enc(model)}/captions?image_id=${match.image_id}&k=5&distinct=true`);
    showCaptions(top, result, match.image_id);
  } catch (error) {
    top.replaceChildren(el("li", {}, error.message));
  }
}

// -- start -----------------------------------------------------------------------------------------------------------
async function examples() {
  try {
    const result = await api(`/api/models/${enc($("left").value)}/examples?n=4`);
    $("examples").replaceChildren(el("span", { class: "hint" }, "captions of the gallery:"),
      ...result.captions.map((c) => el("button", { type: "button", onclick: () => { $("text").value = c; search(); } }, c)));
  } catch (error) {
    $("examples").replaceChildren();
  }
}

function search() {
  const text = $("text").value.trim();
  if (!text) {
    message("type a query first, e.g. a red circle");
    return;
  }
  run({ kind: "text", text });
}

async function start() {
  try {
    state.models = await api("/api/models");
  } catch (error) {
    message(`cannot reach the server: ${error.message}`);
    return;
  }
  const names = state.models.map((m) => m.name);
  $("left").replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  $("right").replaceChildren(el("option", { value: "" }, "(none)"), ...names.map((n) => el("option", { value: n }, n)));
  $("about").textContent = `${names.length} model${names.length > 1 ? "s" : ""}: ${names.join(", ")}`;
  $("right").parentElement.hidden = names.length < 2;  // nothing to put beside a single model
  fromLink();
  examples();
}

// a link's #text=...&k=...&left=...&right=... (what the page writes after each text query) runs that query
function fromLink() {
  const names = state.models.map((m) => m.name);
  const hash = new URLSearchParams(location.hash.slice(1));
  $("left").value = names.includes(hash.get("left")) ? hash.get("left") : names[0];
  $("right").value = hash.has("right") && (hash.get("right") === "" || names.includes(hash.get("right")))
    ? hash.get("right") : (names[1] || "");
  if (hash.get("k")) $("k").value = hash.get("k");
  buildPanes();
  if (hash.get("text")) {
    $("text").value = hash.get("text");
    search();
  }
}

window.addEventListener("hashchange", fromLink);
$("detail").addEventListener("click", (e) => { if (e.target === $("detail")) $("detail").close(); });  // backdrop
$("query").addEventListener("submit", (e) => { e.preventDefault(); search(); });
for (const id of ["left", "right"]) {
  $(id).addEventListener("change", () => {
    if (id === "left") examples();
    if (state.query) run(state.query); else buildPanes();
  });
}
const drop = $("drop");
drop.addEventListener("click", (e) => { if (!e.target.closest(".classes")) $("file").click(); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.target === drop) $("file").click(); });
$("file").addEventListener("change", () => {
  upload($("file").files[0]);
  $("file").value = "";  // choosing the same file again is a new upload
});
$("classes").addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  e.preventDefault();  // not the text search's submit
  if (state.query && state.query.kind === "upload") upload(state.query.file);  // the same image, these classes
  else message("choose or drop an image: the classes are for it");
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", (e) => {
  if (!drop.contains(e.relatedTarget)) drop.classList.remove("over");  // not when it moves onto the text inside
});
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  upload(e.dataTransfer.files[0]);
});
start();
