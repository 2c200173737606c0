/* The episode page (episode.html#id=<episode uid>&<index filters>): every step, keyboard navigation.
   j / ArrowRight: next step, k / ArrowLeft: previous step, n / ]: next episode, p / [: previous episode,
   u / Escape: back to the index. Previous/next episode follow the index's filters and sort order. */
"use strict";

let current = 0, ep = null, filters = {};

function focusStep(i) {
  if (!ep || !ep.steps.length) return;
  current = Math.max(0, Math.min(ep.steps.length - 1, i));
  document.querySelectorAll(".step").forEach((el) => el.classList.toggle("current", Number(el.dataset.step) === current));
  document.querySelectorAll(".stepnav a").forEach((el, j) => el.classList.toggle("current", j === current));
  const el = document.getElementById("step-" + current);
  if (el) el.scrollIntoView({ block: "start" });
  document.getElementById("where").textContent = "step " + (current + 1) + " of " + ep.steps.length;
}

function neighbour(id, delta) {
  const rows = filteredRows(filters);
  const at = rows.findIndex((r) => r.id === id);
  const next = rows[at + delta];
  return at >= 0 && next ? next.id : null;
}

function go(delta) {
  const id = neighbour(ep.id, delta);
  if (id) location.hash = hashOf(Object.assign({ id: id }, filters));
}

function compareLinks(ep) {
  const links = [];
  if (ep.split === "test") {
    links.push(h("a", { href: "compare.html#" + hashOf({ view: "iter", task: ep.task, seed: ep.seed, ro: ep.ro }) },
      "this test episode across iterations"));
    if (R.idx.other) links.push(h("a", { href: "compare.html#" + hashOf({ view: "against", task: ep.task, seed: ep.seed, ro: ep.ro }) },
      "against " + R.idx.other.name));
  } else if (ep.split === "train") {
    links.push(h("a", { href: "compare.html#" + hashOf({ view: "train", task: ep.task, seed: ep.seed }) },
      "what training learned from this episode (pairs, refine / select examples)"));
  }
  return links;
}

function rerunBox(ep) {
  const r = (window.REPLAY_RERUNS || {})[ep.id];
  if (!r) return null;
  return h("section", { class: "rerun " + (r.ok ? "ok" : "diverged"), id: "rerun" },
    h("h3", {}, "Re-execution: ", r.ok ? "reproduced" : "diverged"),
    h("p", {}, r.message),
    (r.differences || []).length > 1 ? h("details", {}, h("summary", {}, "every difference from the record"),
      h("ul", {}, r.differences.map((d) => h("li", {}, d)))) : null,
    r.gif ? h("img", { src: r.gif, alt: "re-executed episode (animated)", class: "gif" }) : null);
}

function render(e) {
  ep = e;
  const main = document.getElementById("main");
  main.textContent = "";
  const prev = neighbour(e.id, -1), next = neighbour(e.id, 1);
  main.appendChild(h("nav", { class: "epnav" },
    h("a", { href: "index.html#" + hashOf(filters) }, "< index (u)"),
    h("a", { href: prev ? episodeLink(prev, filters) : null, class: prev ? "" : "off", id: "prev-ep" }, "previous episode (p)"),
    h("a", { href: next ? episodeLink(next, filters) : null, class: next ? "" : "off", id: "next-ep" }, "next episode (n)"),
    h("span", { id: "where" }), h("span", { class: "keys" }, "keys: j/k or arrows = step, n/p = episode"),
    compareLinks(e)));
  main.appendChild(episodeHeader(e));
  main.appendChild(h("div", { class: "stepnav" }, e.steps.map((s, i) =>
    h("a", { href: "#", class: s.kind ? "failed" : "", title: s.kind || "ok", onclick: (ev) => { ev.preventDefault(); focusStep(i); } }, String(i + 1)))));
  e.steps.forEach((_, i) => main.appendChild(stepCard(e, i)));
  const rerun = rerunBox(e);  // after the steps, which come first; the header links to it
  if (rerun) {
    main.appendChild(rerun);
    main.querySelector(".ephead .meta").appendChild(h("a", { href: "#", class: "chip " + (rerun.classList.contains("ok") ? "positive" : "negative"),
      onclick: (ev) => { ev.preventDefault(); rerun.scrollIntoView(); } }, "re-executed: " + (rerun.classList.contains("ok") ? "reproduced" : "diverged")));
  }
  if (!e.steps.length) main.appendChild(h("p", { class: "error" }, "This episode has no steps."));
  document.title = e.task + " #" + e.seed + " (" + e.split + "/" + e.ro + ", iteration " + e.it + ")";
  focusStep(0);
  window.scrollTo(0, 0);
  document.body.setAttribute("data-ready", "1");
}

function show() {
  const hash = readHash();
  filters = filterState(hash);
  const id = hash.id || (R.rows[0] && R.rows[0].id);
  document.body.removeAttribute("data-ready");
  loadEpisode(id).then(render).catch((err) => {
    document.getElementById("main").textContent = String(err.message || err);
    document.body.setAttribute("data-ready", "1");
  });
}

document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT" || ev.metaKey || ev.ctrlKey || ev.altKey || !ep) return;
  const k = ev.key;
  if (k === "j" || k === "ArrowRight") focusStep(current + 1);
  else if (k === "k" || k === "ArrowLeft") focusStep(current - 1);
  else if (k === "n" || k === "]") go(1);
  else if (k === "p" || k === "[") go(-1);
  else if (k === "u" || k === "Escape") location.href = "index.html#" + hashOf(filters);
  else return;
  ev.preventDefault();
});
window.addEventListener("hashchange", show);
show();
