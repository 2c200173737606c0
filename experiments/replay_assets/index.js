/* The episode index: filters (with counts that follow the other filters), sorting, pages of PAGE rows.
   Only one page of rows is in the DOM at a time, so 20,000 episodes render as fast as 100. */
"use strict";

const PAGE = 100;
const COLUMNS = [
  ["thumb", ""], ["run", "run"], ["group", "split/rollout"], ["it", "iter"], ["task", "task"], ["seed", "seed"],
  ["sample", "sample"], ["label", "label"], ["reward", "reward"], ["steps", "steps"], ["cause", "failure cause"],
];
let state = {}, page = 0;

function facetCounts(key, get) {
  const counts = new Map();
  for (const r of R.rows) if (matches(r, state, key)) counts.set(get(r), (counts.get(get(r)) || 0) + 1);
  return counts;
}

function allValues(get) {
  const seen = new Map();
  R.rows.forEach((r) => seen.set(get(r), true));
  return Array.from(seen.keys()).sort((a, b) => (isNaN(a) || isNaN(b) ? (a < b ? -1 : a > b ? 1 : 0) : a - b));
}

function renderFilters() {
  const box = document.getElementById("filters");
  box.textContent = "";
  for (const [key, label, get] of FILTERS) {
    if (key === "run" && !R.idx.other) continue;
    const counts = facetCounts(key, get);
    const sel = h("select", { id: "f-" + key, "data-key": key, onchange: (e) => setFilter(key, e.target.value) },
      h("option", { value: "" }, "all (" + Array.from(counts.values()).reduce((a, b) => a + b, 0) + ")"),
      allValues(get).map((v) => h("option", { value: v, selected: state[key] === v },
        (key === "run" ? runName(Number(v)) : v) + " (" + (counts.get(v) || 0) + ")")));
    box.appendChild(h("label", {}, label, sel));
  }
  box.appendChild(h("label", {}, "episode id contains",
    h("input", { id: "f-q", type: "search", value: state.q || "", onchange: (e) => setFilter("q", e.target.value) })));
  box.appendChild(h("button", { onclick: () => { state = {}; page = 0; update(); } }, "clear filters"));
}

function setFilter(key, value) {
  if (value) state[key] = value; else delete state[key];
  page = 0;
  update();
}

function setSort(key) {
  if (state.sort === key) state.dir = state.dir === "desc" ? "" : "desc";
  else { state.sort = key; state.dir = ""; }
  update();
}

function renderCounts(rows) {
  const pos = rows.filter((r) => r.label === "positive").length;
  const causes = new Map();
  rows.forEach((r) => { if (r.cause) causes.set(r.cause, (causes.get(r.cause) || 0) + 1); });
  const box = document.getElementById("counts");
  box.textContent = "";
  box.appendChild(h("span", { id: "n-shown" }, rows.length + " of " + R.rows.length + " episodes"));
  box.appendChild(h("span", {}, pos + " positive (" + pct(pos, rows.length) + ")"));
  Array.from(causes.entries()).sort((a, b) => b[1] - a[1]).forEach(([c, n]) =>
    box.appendChild(h("a", { href: "#", class: "chip", onclick: (e) => { e.preventDefault(); setFilter("cause", c); } }, c + " " + n)));
}

function renderTable(rows) {
  const table = document.getElementById("table");
  table.textContent = "";
  table.appendChild(h("thead", {}, h("tr", {}, COLUMNS.filter(([k]) => k !== "run" || R.idx.other).map(([k, label]) =>
    h("th", { class: state.sort === k ? "sorted " + (state.dir || "asc") : "", onclick: k === "thumb" ? null : () => setSort(k === "group" ? "group" : k) }, label)))));
  const body = h("tbody", {});
  const link = filterState(state);
  rows.slice(page * PAGE, (page + 1) * PAGE).forEach((r) => {
    const href = episodeLink(r.id, link);
    body.appendChild(h("tr", { class: r.label, "data-id": r.id },
      h("td", {}, r.thumb ? h("a", { href: href }, h("img", { class: "thumb", src: r.thumb, loading: "lazy", alt: "" })) : null),
      R.idx.other ? h("td", {}, runName(r.run)) : null,
      h("td", {}, r.group), h("td", {}, String(r.it)), h("td", {}, h("a", { href: href }, r.task)),
      h("td", {}, String(r.seed)), h("td", {}, String(r.sample)), h("td", {}, badge(r.label)), h("td", {}, String(r.reward)),
      h("td", {}, String(r.steps)), h("td", { class: "cause" }, r.cause)));
  });
  table.appendChild(body);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  const pager = document.getElementById("pager");
  pager.textContent = "";
  pager.appendChild(h("button", { id: "prev-page", disabled: page === 0, onclick: () => { page--; update(); } }, "< previous"));
  pager.appendChild(h("span", {}, " page " + (page + 1) + " of " + pages + " "));
  pager.appendChild(h("button", { id: "next-page", disabled: page + 1 >= pages, onclick: () => { page++; update(); } }, "next >"));
}

function update() {
  const rows = filteredRows(state);
  page = Math.min(page, Math.max(0, Math.ceil(rows.length / PAGE) - 1));
  renderFilters();
  renderCounts(rows);
  renderTable(rows);
  const hash = hashOf(Object.assign({}, state, page ? { page: page } : {}));
  // keep a plain anchor (#plots-top) while no filter is set; else the hash records the filters
  if (hash || location.hash.indexOf("=") >= 0) history.replaceState(null, "", "#" + hash);
}

function start() {
  const hash = readHash();
  state = filterState(hash);
  page = Number(hash.page || 0);
  update();
  window.__replayRendered = performance.now();  // for experiments/bench_replay.py
  document.body.setAttribute("data-ready", "1");
}

window.addEventListener("hashchange", () => { const hs = readHash(); state = filterState(hs); page = Number(hs.page || 0); update(); });
start();
