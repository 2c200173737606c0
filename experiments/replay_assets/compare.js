/* Comparisons (compare.html#view=...):
   view=iter:    one test episode (task, seed, rollout) at iteration a and iteration b, side by side;
   view=train:   a train episode's most recent positive and negative trajectories at training iteration k, the
                 decision step marked, and the self-refine / self-select examples built from them;
   view=against: this run and the --against run on the same test episode.
   No view: the lists to pick from. */
"use strict";

const C = window.REPLAY_COMPARE || { iters: [], train: [], against: [], againstSummary: [] };
const main = document.getElementById("main");
const sameEp = (r, hs) => r.task === hs.task && String(r.seed) === String(hs.seed);

function outcomeChips(iters, extra) {
  return Object.keys(iters).sort((a, b) => a - b).map((k) => {
    const e = iters[k];
    return h("a", { href: episodeLink(e.uid), class: "chip " + (e.ok ? "positive" : "negative"), title: e.cause || "success" },
      (extra || "it ") + k + (e.ok ? " ✓" : " ✗"));
  });
}

function column(title, id, opts) {
  const col = h("div", { class: "side" }, h("h3", {}, title), h("p", {}, "loading..."));
  loadEpisode(id).then((ep) => {
    col.textContent = "";
    col.appendChild(h("h3", {}, title));
    col.appendChild(episodeHeader(ep));
    ep.steps.forEach((_, i) => col.appendChild(stepCard(ep, i, { prefix: (opts.prefix || "s"), mark: opts.mark === i ? "decision step" : null })));
    done();
  }).catch((err) => { col.textContent = String(err.message || err); done(); });
  return col;
}

let pending = 0;
function done() { if (--pending <= 0) document.body.setAttribute("data-ready", "1"); }
function sides(a, b) { pending = 2; return h("div", { class: "sidebyside" }, a, b); }

function picker(label, values, value, key, hs) {
  return h("label", {}, label, h("select", { onchange: (e) => { hs[key] = e.target.value; location.hash = hashOf(hs); } },
    values.map((v) => h("option", { value: v, selected: String(v) === String(value) }, v === "" ? "any" : v))));
}

function iterView(hs) {
  const rec = C.iters.find((r) => sameEp(r, hs) && r.rollout === (hs.ro || "greedy"));
  if (!rec) return main.appendChild(h("p", {}, "No test episode " + hs.task + " #" + hs.seed + " here."));
  const ks = Object.keys(rec.iters).sort((a, b) => a - b);
  const a = hs.a || ks[0], b = hs.b || ks[ks.length - 1];
  main.appendChild(h("h2", {}, "Test episode ", hs.task, " #", hs.seed, " (" + rec.rollout + ") across iterations"));
  main.appendChild(h("div", { class: "pickers" }, picker("left: iteration ", ks, a, "a", hs), picker(" right: iteration ", ks, b, "b", hs),
    " outcome per iteration: ", outcomeChips(rec.iters)));
  main.appendChild(sides(column("iteration " + a, rec.iters[a].uid, { prefix: "a" }), column("iteration " + b, rec.iters[b].uid, { prefix: "b" })));
}

function againstView(hs) {
  const rec = C.against.find((r) => sameEp(r, hs) && r.rollout === (hs.ro || "greedy"));
  if (!rec) return main.appendChild(h("p", {}, "Episode " + hs.task + " #" + hs.seed + " is not shared by both runs."));
  const ka = Object.keys(rec.a).sort((x, y) => x - y), kb = Object.keys(rec.b).sort((x, y) => x - y);
  const a = hs.a || ka[ka.length - 1], b = hs.b || kb[kb.length - 1];
  main.appendChild(h("h2", {}, hs.task, " #", hs.seed, " (" + rec.rollout + "): ", R.idx.run.name, " vs ", R.idx.other.name));
  main.appendChild(h("div", { class: "pickers" }, picker(R.idx.run.name + ": iteration ", ka, a, "a", hs),
    picker(" " + R.idx.other.name + ": iteration ", kb, b, "b", hs)));
  main.appendChild(sides(column(R.idx.run.name + ", iteration " + a, rec.a[a].uid, { prefix: "a" }),
    column(R.idx.other.name + ", iteration " + b, rec.b[b].uid, { prefix: "b" })));
}

function candidateSource(c) {
  const r = R.byId.get(c.uid);
  return (r ? "iteration " + r.it + " sample " + r.sample + ", " : "") + "step " + (c.step + 1);
}

function candidateList(cands) {
  return h("ol", { class: "cands" }, cands.map((c) => h("li", { class: c.ok ? "positive" : "negative" },
    badge(c.ok ? "positive" : "negative"), " ", c.uid ? h("a", { href: episodeLink(c.uid) }, candidateSource(c)) : null,
    pre(c.output, "output"))));
}

function trainView(hs) {
  const recs = C.train.filter((r) => sameEp(r, hs));
  if (!recs.length) return main.appendChild(h("p", {}, "No training iteration had a positive sample of " + hs.task + " #" + hs.seed +
    ": with no positive there is nothing to contrast (sft, refine and select all need one)."));
  const ks = recs.map((r) => r.k);
  const rec = recs.find((r) => String(r.k) === String(hs.k)) || recs[recs.length - 1];
  main.appendChild(h("h2", {}, "Train episode ", hs.task, " #", hs.seed, ": what model ", String(rec.k), " learned from it"));
  main.appendChild(h("div", { class: "pickers" }, picker("training iteration ", ks, rec.k, "k", hs),
    " pool: " + rec.n_pos + " positive, " + rec.n_neg + " negative sample(s) drawn by models 0.." + (rec.k - 1) + "; ",
    "SFT teaches step(s) " + (rec.sft_steps.map((i) => i + 1).join(", ") || "none") + " of the positive"));
  main.appendChild(h("div", { class: "pickers" }, "samples of this episode in the pool: ", rec.members.map((id) => {
    const r = R.byId.get(id);
    return r ? h("a", { href: episodeLink(id), class: "chip " + r.label }, "it " + r.it + " s" + r.sample + (r.label === "positive" ? " ✓" : " ✗")) : null;
  })));
  if (!rec.neg) return main.appendChild(h("p", {}, "No negative sample: SFT only, no self-refine or self-select example."));
  const why = { diverged: "the two trajectories saw different pages before they chose differently (the environment diverged)",
    same: "the two trajectories never chose differently on the same page" }[rec.why] ||
    "the two trajectories never saw the same page and chose differently";
  if (!rec.decision) main.appendChild(h("p", { class: "error", id: "no-decision" }, "No decision step: " + why +
    ", so no self-refine or self-select example was built from this episode."));
  else main.appendChild(h("p", {}, "Decision step: step " + (rec.decision[0] + 1) + " of the positive, step " + (rec.decision[1] + 1) + " of the negative."));
  if (rec.refine) main.appendChild(h("section", { class: "example", id: "refine" }, h("h3", {}, "Self-refine example"),
    h("div", { class: "sidebyside" }, h("div", {}, h("b", {}, "wrong (input)"), pre(rec.refine.wrong, "output")),
      h("div", {}, h("b", {}, "corrected (target)"), pre(rec.refine.target, "output"))),
    h("details", {}, h("summary", {}, "the whole prompt"), pre(rec.refine.prompt))));
  rec.select.forEach((s, j) => main.appendChild(h("section", { class: "example select-example" },
    h("h3", {}, "Self-select example " + (j + 1) + " of " + rec.select.length),
    h("div", { class: "sidebyside" }, h("div", {}, h("b", {}, "candidates (input, in prompt order)"), candidateList(s.candidates)),
      h("div", {}, h("b", {}, "choice (target)"), pre(s.target, "output"))),
    h("details", {}, h("summary", {}, "the whole prompt"), pre(s.prompt)))));
  main.appendChild(sides(column("most recent positive", rec.pos, { prefix: "pos", mark: rec.decision ? rec.decision[0] : -1 }),
    column("most recent negative", rec.neg, { prefix: "neg", mark: rec.decision ? rec.decision[1] : -1 })));
}

const SHOW = 200;  // rows rendered at once per list: a run of 20,000 episodes has thousands of pairs

/* A table of items rendered SHOW at a time (`row(item)` -> <tr>), with a button for the next SHOW. */
function table(head, items, row) {
  const body = h("tbody", {});
  const t = h("table", { class: "list" }, h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))), body);
  let shown = 0;
  const more = h("button", { class: "more" });
  const fill = () => {
    items.slice(shown, shown + SHOW).forEach((it) => body.appendChild(row(it)));
    shown = Math.min(items.length, shown + SHOW);
    more.textContent = "show " + Math.min(SHOW, items.length - shown) + " more of " + (items.length - shown);
    more.style.display = shown < items.length ? "" : "none";
  };
  more.addEventListener("click", fill);
  fill();
  return h("div", {}, t, more);
}

function listView(hs) {
  const ro = hs.ro || "greedy", change = hs.change || "";
  const rollouts = Array.from(new Set(C.iters.map((r) => r.rollout)));
  const iters = C.iters.filter((r) => r.rollout === ro && (!change || r.change === change));
  main.appendChild(h("nav", { class: "pickers" }, h("a", { href: "#iters" }, "test episodes across iterations"),
    h("a", { href: "#train" }, "training pairs and examples"), R.idx.other ? h("a", { href: "#against" }, "against " + R.idx.other.name) : null));
  main.appendChild(h("h2", { id: "iters" }, "Test episodes across iterations"));
  main.appendChild(h("div", { class: "pickers" }, picker("rollout ", rollouts, ro, "ro", hs),
    picker(" change first -> last iteration ", ["", "fixed", "broken", "same"], change, "change", hs), " " + iters.length + " episode(s)"));
  main.appendChild(table(["task", "seed", "outcome per iteration", "change", ""], iters, (r) => h("tr", {},
    h("td", {}, r.task), h("td", {}, String(r.seed)), h("td", {}, outcomeChips(r.iters)), h("td", { class: r.change }, r.change),
    h("td", {}, h("a", { href: "#" + hashOf({ view: "iter", task: r.task, seed: r.seed, ro: r.rollout }) }, "side by side")))));
  main.appendChild(h("h2", { id: "train" }, "Training: contrastive pairs and the examples built from them"));
  if (!C.train.length) main.appendChild(h("p", {}, "No train episode had a positive sample, so self-training built no examples."));
  else main.appendChild(table(["training iteration", "task", "seed", "positives", "negatives", "decision step", "refine", "select", ""],
    C.train, (r) => h("tr", {}, h("td", {}, String(r.k)), h("td", {}, r.task), h("td", {}, String(r.seed)), h("td", {}, String(r.n_pos)),
      h("td", {}, String(r.n_neg)), h("td", {}, r.decision ? (r.decision[0] + 1) + " / " + (r.decision[1] + 1) : (r.neg ? r.why || "-" : "-")),
      h("td", {}, r.refine ? "1" : "0"), h("td", {}, String(r.select.length)),
      h("td", {}, h("a", { href: "#" + hashOf({ view: "train", task: r.task, seed: r.seed, k: r.k }) }, "open")))));
  if (!R.idx.other) return;
  main.appendChild(h("h2", { id: "against" }, R.idx.run.name + " vs " + R.idx.other.name + " on shared test episodes"));
  main.appendChild(table(["rollout", "task", "episodes", R.idx.run.name, R.idx.other.name], C.againstSummary, (r) => h("tr", {},
    h("td", {}, r.rollout), h("td", {}, r.task), h("td", {}, String(r.n)), h("td", {}, r.a + " (" + pct(r.a, r.n) + ")"),
    h("td", {}, r.b + " (" + pct(r.b, r.n) + ")"))));
  main.appendChild(table(["rollout", "task", "seed", R.idx.run.name, R.idx.other.name, "verdict (last iterations)", ""],
    C.against, (r) => h("tr", {}, h("td", {}, r.rollout), h("td", {}, r.task), h("td", {}, String(r.seed)),
      h("td", {}, outcomeChips(r.a)), h("td", {}, outcomeChips(r.b)), h("td", {}, r.verdict),
      h("td", {}, h("a", { href: "#" + hashOf({ view: "against", task: r.task, seed: r.seed, ro: r.rollout }) }, "side by side")))));
}

function show() {
  const hs = readHash();
  main.textContent = "";
  document.body.removeAttribute("data-ready");
  pending = 0;
  if (hs.view === "iter") iterView(hs);
  else if (hs.view === "train") trainView(hs);
  else if (hs.view === "against" && R.idx.other) againstView(hs);
  else listView(hs);
  if (pending === 0) document.body.setAttribute("data-ready", "1");
}
window.addEventListener("hashchange", show);
show();
