/* Shared by the replay pages: DOM building, the episode index, on-demand episode chunks, filters, step cards.
   Plain ES2017, no library: the report opens from file:// with no network. */
"use strict";

/* h("div", {class: "x", onclick: f}, child, "text", [more]) -> an element; null/false children are skipped. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  const add = (c) => {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  };
  children.forEach(add);
  return el;
}

const R = (function () {
  const idx = window.REPLAY_INDEX || { rows: [], cols: [], chunk: 200 };
  const rows = idx.rows.map((r, i) => {
    const o = { i: i };
    idx.cols.forEach((c, j) => { o[c] = r[j]; });
    o.group = o.split + "/" + o.ro;
    return o;
  });
  const byId = new Map(rows.map((r) => [r.id, r]));
  return { idx: idx, rows: rows, byId: byId, chunks: new Map(), waiting: new Map() };
})();

/* Called by data/ep/NNNN.js. */
window.replayChunk = function (n, episodes) {
  R.chunks.set(n, new Map(episodes.map((e) => [e.id, e])));
  (R.waiting.get(n) || []).forEach((f) => f());
  R.waiting.delete(n);
};

function chunkFile(n) { return "data/ep/" + String(n).padStart(4, "0") + ".js"; }

/* The episode `id` in full (loads its chunk by <script src>, which file:// allows, unlike fetch()). */
function loadEpisode(id) {
  const row = R.byId.get(id);
  if (!row) return Promise.reject(new Error("no episode " + id + " in this report"));
  const n = Math.floor(row.i / R.idx.chunk);
  if (R.chunks.has(n)) return Promise.resolve(R.chunks.get(n).get(id));
  return new Promise((resolve, reject) => {
    const first = !R.waiting.has(n);
    R.waiting.set(n, (R.waiting.get(n) || []).concat([() => resolve(R.chunks.get(n).get(id))]));
    if (first) {
      const s = h("script", { src: chunkFile(n) });
      s.onerror = () => reject(new Error("cannot load " + chunkFile(n)));
      document.head.appendChild(s);
    }
  });
}

/* --- URL hash state: "#key=value&key=value" (filters, the episode shown, a comparison). */
function readHash() {
  const out = {};
  location.hash.replace(/^#/, "").split("&").filter(Boolean).forEach((kv) => {
    const i = kv.indexOf("=");
    if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
  });
  return out;
}
function hashOf(state) {
  return Object.entries(state).filter(([, v]) => v !== "" && v !== undefined && v !== null)
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
}

/* --- filters shared by the index and the episode page's previous/next. */
const FILTERS = [
  ["run", "run", (r) => String(r.run)],
  ["g", "split/rollout", (r) => r.group],
  ["it", "iteration", (r) => String(r.it)],
  ["task", "task", (r) => r.task],
  ["label", "outcome", (r) => r.label],
  ["cause", "failure cause", (r) => r.cause || "(success)"],
];
const FILTER_KEYS = FILTERS.map((f) => f[0]).concat(["q", "sort", "dir"]);

function filterState(hash) {
  const s = {};
  FILTER_KEYS.forEach((k) => { if (hash[k]) s[k] = hash[k]; });
  return s;
}
function matches(row, state, skip) {
  for (const [key, , get] of FILTERS) {
    if (key !== skip && state[key] !== undefined && state[key] !== "" && get(row) !== state[key]) return false;
  }
  if (state.q && row.id.toLowerCase().indexOf(state.q.toLowerCase()) < 0) return false;
  return true;
}
function sortRows(rows, state) {
  if (!state.sort) return rows;
  const key = state.sort, dir = state.dir === "desc" ? -1 : 1;
  return rows.slice().sort((a, b) => (a[key] < b[key] ? -dir : a[key] > b[key] ? dir : a.i - b.i));
}
function filteredRows(state) { return sortRows(R.rows.filter((r) => matches(r, state)), state); }

function runName(n) { return n ? (R.idx.other && R.idx.other.name) || "other" : R.idx.run.name; }
function pct(a, n) { return n ? (100 * a / n).toFixed(1) + "%" : "-"; }
function badge(label) { return h("span", { class: "badge " + label }, label); }
function episodeLink(id, extra) { return "episode.html#" + hashOf(Object.assign({ id: id }, extra || {})); }

/* --- one screenshot/image with the acted-on element outlined (box in screenshot pixels -> % of the image). */
function shot(src, target, scale) {
  const wrap = h("div", { class: "shot" });
  const img = h("img", { src: src, loading: "lazy", alt: "observation" });
  wrap.appendChild(img);
  const place = () => {
    const W = img.naturalWidth, H = img.naturalHeight;
    if (!W || !H) return;
    img.style.width = Math.min(W * scale, 520) + "px";
    if (!target) return;
    let mark = null;
    if (target.box) {
      const [l, t, w, hh] = target.box;
      mark = h("div", { class: "target", title: "ref " + target.ref });
      Object.assign(mark.style, { left: 100 * l / W + "%", top: 100 * t / H + "%", width: 100 * w / W + "%", height: 100 * hh / H + "%" });
    } else if (target.xy) {
      mark = h("div", { class: "target point", title: "click_xy" });
      Object.assign(mark.style, { left: 100 * target.xy[0] / W + "%", top: 100 * target.xy[1] / H + "%" });
    }
    if (mark) wrap.appendChild(mark);
  };
  img.addEventListener("load", place);
  if (img.complete) place();
  return wrap;
}

function pre(text, cls) { return h("pre", { class: cls || "" }, text === null || text === undefined ? "" : text); }

/* One step of an episode as a card: goal, image(s) with the target, model output, action/answer, error, reward. */
function stepCard(ep, i, opts) {
  const s = ep.steps[i], o = opts || {};
  const target = s.target;
  const acted = s.parsed === null ? h("span", { class: "bad" }, "unparsable")
    : h("code", {}, s.parsed);
  const where = target && target.ref !== undefined
    ? (target.box ? " (ref " + target.ref + " @" + target.box.join(",") + ")" : " (ref " + target.ref + " is not on this page)") : "";
  return h("section", { class: "step" + (s.kind ? " failed" : "") + (o.mark ? " decision" : ""), id: (o.prefix || "step") + "-" + i, "data-step": i },
    h("h3", {}, "Step " + (i + 1) + " / " + ep.steps.length, o.mark ? h("span", { class: "mark" }, o.mark) : null,
      s.kind ? h("span", { class: "badge negative" }, s.kind) : null),
    h("div", { class: "goal" }, h("b", {}, ep.multiStep ? "Goal: " : "Question: "), s.goal),
    s.choices ? h("ol", { class: "choices", type: "A" }, s.choices.map((c) => h("li", {}, c))) : null,
    h("div", { class: "cols" },
      h("div", { class: "imgs" }, s.imgs.map((src) => shot(src, target, ep.multiStep ? 2 : 1.5))),
      h("div", { class: "facts" },
        s.last ? h("div", {}, h("b", {}, "Last action: "), h("code", {}, s.last)) : null,
        h("div", { class: "label-line" }, h("b", {}, "Model output"), " (chain of thought + final line)"),
        s.out ? pre(s.out, "output") : h("pre", { class: "output empty" }, "(empty output)"),
        h("div", {}, h("b", {}, ep.multiStep ? "Action: " : "Answer: "), acted, where),
        !ep.multiStep && ep.gold !== null ? h("div", {}, h("b", {}, "Gold: "), h("code", {}, ep.gold)) : null,
        s.err ? h("div", { class: "error" }, h("b", {}, "Error: "), s.err) : null,
        h("div", {}, h("b", {}, "Reward: "), String(s.reward), s.done ? " (episode ended)" : "",
          s.info && s.info.stuck ? h("span", { class: "badge negative" }, "stuck: the page did not change") : null),
        s.info && s.info.reason ? h("div", {}, h("b", {}, "Reason: "), s.info.reason) : null,
        s.cands && s.cands.length ? h("details", {}, h("summary", {}, s.cands.length + " candidates this step was chosen from"),
          s.cands.map((c, j) => h("div", {}, h("b", {}, "candidate " + (j + 1)), pre(c, "output")))) : null,
        s.ctx ? h("details", { class: "dom" }, h("summary", {}, ep.multiStep ? "DOM text" : "Text context"), pre(s.ctx)) : null,
        s.fmt ? h("div", { class: "fmt" }, "format: ", h("code", {}, s.fmt)) : null)));
}

function episodeHeader(ep) {
  return h("div", { class: "ephead" },
    h("h2", {}, ep.task, " #", String(ep.seed), " ", badge(ep.label)),
    h("div", { class: "meta" },
      h("span", {}, "run ", h("b", {}, ep.runName)), h("span", {}, ep.split + "/" + ep.ro),
      h("span", {}, "iteration " + ep.it), h("span", {}, "sample " + ep.sample), h("span", {}, "model " + (ep.model || "-")),
      h("span", {}, "reward " + ep.reward), h("span", {}, ep.steps.length + " step(s)" + (ep.multiStep ? " of " + ep.maxSteps : "")),
      ep.cause ? h("span", { class: "bad" }, "failed: " + ep.cause) : null),
    h("div", { class: "ids" }, h("code", {}, ep.id)),
    ep.error ? h("div", { class: "error" }, "Episode not played: " + ep.error) : null);
}
