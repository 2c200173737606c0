"""evaluate()'s metrics on hand-built situations, with a scripted policy whose every answer is known.

One-step QA (real QAEnv episodes over PIL images) and a small scripted multi-step web-like env (no browser):
test@1, maj@N (ties, unparsable answers), select@N (select calls only where candidates disagree), pass@N,
episodes that end early, per-group rows, and the records and rollouts that evaluate returns. Every expected
value is worked out by hand in the comments.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from PIL import Image

from envs import EnvSplit
from envs.episode import EpisodeEnv, Observation
from envs.qa import QAEnv, QAItem
from envs.scoring import final_answer
from helpers import PROMPTS
from reflection.evaluate import EvalConfig, evaluate

SELECT_TOKENS = 7


def prompt_text(messages) -> str:
    return messages[-1]["content"][-1]["text"]


def is_select(messages) -> bool:
    return "Which prediction is correct?" in prompt_text(messages)


class ScriptedPolicy:
    """The Policy interface (`generate`) answering from a script instead of a model.

    `script[(desc, key)]` lists the texts that the prompts with that key get, in order, over every call with
    that `desc` (`key(messages)` names a prompt: a question, an episode's state). Every call is logged; a
    prompt the script has no text left for gets an unparsable text and is logged in `unscripted`."""

    def __init__(self, script: dict[tuple[str, str], list[str]], key):
        self.script = {k: list(v) for k, v in script.items()}
        self.key = key
        self.used: dict[tuple[str, str], int] = defaultdict(int)
        self.calls: list[dict] = []  # one per generate call
        self.unscripted: list[tuple[str, str]] = []

    def count_tokens(self, text: str) -> int:  # a token per word
        return len(text.split())

    def generate(self, prompts, n=1, greedy=False, max_new_tokens=None, desc="generate", progress=True):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        self.calls.append({"desc": desc, "greedy": greedy, "max_new_tokens": max_new_tokens, "prompts": prompts,
                           "counts": counts})
        out = []
        for messages, count in zip(prompts, counts):
            k = (desc, self.key(messages))
            texts = []
            for _ in range(count):
                i = self.used[k]
                self.used[k] += 1
                if i < len(self.script.get(k, [])):
                    texts.append(self.script[k][i])
                else:
                    self.unscripted.append(k)
                    texts.append("(unscripted)")
            out.append(texts)
        return out

    def prompts_of(self, desc: str) -> list:
        return [p for c in self.calls if c["desc"] == desc for p in c["prompts"]]


# ---------------------------------------------------------------------------------------------- one-step QA

def question_key(messages) -> str:
    return prompt_text(messages).split("\n", 1)[0]  # the question is the prompt's first line


# Four integer questions; N_max = 4 samples each. What each metric should make of them:
#   A (gold 3, domain x): greedy right. Samples 5, 3, 3, 5.
#       maj@1 5 F | maj@2 tie 5:3 -> first reached, 5 F | maj@3 3 T | maj@4 tie 2:2 -> 5 F
#       pass F T T T | select@1 = sample 0: F | select@2,3,4: candidates disagree -> select says 3: T T T
#   B (gold 7, domain x): greedy unparsable F. Samples -, -, 7, 8 (two unparsable).
#       maj@1 nothing parsed -> the first text F | maj@2 F | maj@3 only 7 votes T | maj@4 tie 7:8 -> 7 T
#       pass F F T T | select@1 F | select@2: nothing parsed, so the model selects: 8 F | select@3: 7 T |
#       select@4: 8 F
#   C (gold 2, domain y): greedy right. Samples all 2 (different texts): every metric T, no select call.
#   D (gold 4, no domain): greedy right. Samples 9, 9, 9, 4.
#       maj F F F F | pass F F F T | select@1 F | select@2,3 all agree on 9: no select call, F |
#       select@4 disagree -> select says 4: T
QA = {  # id: (question, gold, domain)
    "A": ("How many red cubes?", "3", "x"),
    "B": ("How many blue balls?", "7", "x"),
    "C": ("How many green cones?", "2", "y"),
    "D": ("How many grey rings?", "4", None),
}
GREEDY = {"A": "Three cubes.\nAnswer: 3", "B": "I cannot tell.", "C": "Two.\nAnswer: 2", "D": "Four.\nAnswer: 4"}
SAMPLES = {
    "A": ["a0\nAnswer: 5", "a1\nAnswer: 3", "a2\nAnswer: 3", "a3\nAnswer: 5"],
    "B": ["b0 no idea", "b1 still thinking", "b2\nAnswer: 7", "b3\nAnswer: 8"],
    "C": ["c0\nAnswer: 2", "c1\nAnswer: 2", "c2\nAnswer: 2", "c3\nAnswer: 2"],
    "D": ["d0\nAnswer: 9", "d1\nAnswer: 9", "d2\nAnswer: 9", "d3\nAnswer: 4"],
}
SELECTS = {  # (item, N) -> the select prompt's greedy output; only where the candidates disagree
    ("A", 2): "Answer: 3", ("A", 3): "Answer: 3", ("A", 4): "Answer: 3",
    ("B", 2): "Answer: 8", ("B", 3): "Answer: 7", ("B", 4): "Answer: 8",
    ("D", 4): "Answer: 4",
}
OUTCOMES = {  # metric -> success of A, B, C, D
    "test@1": [1, 0, 1, 1],
    "maj@1": [0, 0, 1, 0], "maj@2": [0, 0, 1, 0], "maj@3": [1, 1, 1, 0], "maj@4": [0, 1, 1, 0],
    "pass@1": [0, 0, 1, 0], "pass@2": [1, 0, 1, 0], "pass@3": [1, 1, 1, 0], "pass@4": [1, 1, 1, 1],
    "select@1": [0, 0, 1, 0], "select@2": [1, 0, 1, 0], "select@3": [1, 1, 1, 0], "select@4": [1, 0, 1, 1],
}
NS = [1, 2, 3, 4]


def qa_split(tmp_path, num_envs: int) -> EnvSplit:
    (tmp_path / "images").mkdir(exist_ok=True)
    items = []
    for i, (item_id, (question, gold, domain)) in enumerate(QA.items()):
        Image.new("RGB", (32, 32), (40 * i, 200 - 40 * i, 90)).save(tmp_path / "images" / f"{item_id}.png")
        items.append(QAItem(id=item_id, question=question, answer=gold, answer_type="integer",
                            image=f"images/{item_id}.png", meta={"domain": domain} if domain else {}))
    make = lambda: QAEnv("qa", items, tmp_path, text_context=False, breakdown=("domain",))
    probe = make()
    episodes = probe.episodes()
    groups = {t: g for t, g in ((t, probe.groups(t)) for t, _ in episodes) if g}
    return EnvSplit("qa", make, episodes, num_envs, 1, False, groups, {})


def qa_policy(ns: list[int]) -> ScriptedPolicy:
    script = {}
    for item_id, (question, _, _) in QA.items():
        script[("eval greedy", question)] = [GREEDY[item_id]]
        script[(f"eval sample x{max(ns)}", question)] = SAMPLES[item_id][:max(ns)]
        for n in ns:
            if (item_id, n) in SELECTS:
                script[(f"eval select@{n}", question)] = [SELECTS[(item_id, n)]]
    return ScriptedPolicy(script, question_key)


def mean(values, idx=None) -> float:
    idx = range(len(values)) if idx is None else idx
    return sum(values[i] for i in idx) / len(idx)


@pytest.mark.parametrize("num_envs", [64, 1])  # all episodes at once, or one at a time: the same metrics
def test_one_step_metrics_on_known_answers(tmp_path, num_envs):
    split = qa_split(tmp_path, num_envs)
    policy = qa_policy(NS)
    metrics, records, rollouts = evaluate(policy, PROMPTS, split, EvalConfig(NS, SELECT_TOKENS, True, 1), 2, "m")
    assert policy.unscripted == [], "asked for texts the script does not hold"

    assert metrics["all"] == {m: pytest.approx(mean(v)) for m, v in OUTCOMES.items()}
    assert metrics["all"]["test@1"] == 0.75 and metrics["all"]["maj@3"] == 0.75 and metrics["all"]["pass@4"] == 1
    # per-group rows: A and B are in domain x, C in y, D in no group (only in "all")
    assert set(metrics) == {"all", ("domain", "x"), ("domain", "y")}
    assert metrics[("domain", "x")] == {m: pytest.approx(mean(v, [0, 1])) for m, v in OUTCOMES.items()}
    assert metrics[("domain", "y")] == {m: float(v[2]) for m, v in OUTCOMES.items()}
    assert metrics[("domain", "x")]["maj@4"] == 0.5 and metrics[("domain", "x")]["select@2"] == 0.5

    # select calls: only where the first N candidates disagree (or none of them parses): A and B at N=2, 3, 4,
    # D at N=4; C never; and none at N=1. Each is greedy with the select budget.
    selects = [c for c in policy.calls if any(is_select(p) for p in c["prompts"])]
    assert all(c["greedy"] and c["max_new_tokens"] == SELECT_TOKENS for c in selects)
    asked = sorted((c["desc"], question_key(p)) for c in selects for p in c["prompts"])
    assert asked == sorted((f"eval select@{n}", QA[i][0]) for i, n in SELECTS)
    assert len(asked) == 7
    # a select prompt holds the first N samples, in sample order
    env = split.make()
    for c in selects:
        n = int(c["desc"].rsplit("@", 1)[1])
        for p in c["prompts"]:
            item_id = next(i for i, q in QA.items() if q[0] == question_key(p))
            obs, _ = env.reset(seed=0, options={"task_id": item_id})
            assert p == PROMPTS.select_prompt(obs, SAMPLES[item_id][:n])
    # greedy and sampled chain-of-thought calls: one greedy completion and N_max samples per question
    cot = [c for c in policy.calls if c not in selects]
    assert {c["desc"] for c in cot} == {"eval greedy", "eval sample x4"}
    for c in cot:
        assert c["greedy"] == (c["desc"] == "eval greedy")
    per_question = defaultdict(int)
    for c in cot:
        for p, count in zip(c["prompts"], c["counts"]):
            per_question[(c["desc"], question_key(p))] += count
    assert per_question == {**{("eval greedy", q): 1 for q, _, _ in QA.values()},
                            **{("eval sample x4", q): 4 for q, _, _ in QA.values()}}

    # records: one per episode, in episode order
    assert [(r["task_id"], r["seed"], r["gold"]) for r in records] == [(i, 0, g) for i, (_, g, _) in QA.items()]
    for r, item_id, ok in zip(records, QA, OUTCOMES["test@1"]):
        assert r["greedy"] == [GREEDY[item_id]] and r["greedy_reward"] == ok
        assert [s["outputs"] for s in r["samples"]] == [[t] for t in SAMPLES[item_id]]
        assert [s["parsed"] for s in r["samples"]] == [final_answer(t) for t in SAMPLES[item_id]]
        gold = QA[item_id][1]
        assert [s["reward"] for s in r["samples"]] == [float(final_answer(t) == gold) for t in SAMPLES[item_id]]
        assert set(r["select"]) == {"2", "3", "4"}
        for n in (2, 3, 4):
            expected = SELECTS.get((item_id, n), SAMPLES[item_id][0])  # agreeing candidates: the first stands
            assert r["select"][str(n)]["output"] == expected
            assert r["select"][str(n)]["parsed"] == final_answer(expected)
            assert r["select"][str(n)]["reward"] == OUTCOMES[f"select@{n}"][list(QA).index(item_id)]
    # rollouts: the greedy episodes and the N_max samples, stamped with iteration and model
    assert set(rollouts) == {"greedy", "samples"}
    assert [(t.task_id, t.reward, t.steps[0].output) for t in rollouts["greedy"]] == [
        (i, float(ok), GREEDY[i]) for i, ok in zip(QA, OUTCOMES["test@1"])]
    assert [(t.task_id, t.sample, t.steps[0].output) for t in rollouts["samples"]] == [
        (i, j, SAMPLES[i][j]) for i in QA for j in range(4)]
    assert all(t.iteration == 2 and t.model == "m" for ts in rollouts.values() for t in ts)


def test_one_step_without_ns_is_greedy_only(tmp_path):
    split = qa_split(tmp_path, 64)
    policy = qa_policy([1])
    metrics, records, rollouts = evaluate(policy, PROMPTS, split, EvalConfig([], SELECT_TOKENS, True, 1))
    assert metrics["all"] == {"test@1": 0.75}
    assert metrics[("domain", "x")] == {"test@1": 0.5} and metrics[("domain", "y")] == {"test@1": 1.0}
    assert [(c["desc"], c["greedy"]) for c in policy.calls] == [("eval greedy", True)]
    assert set(rollouts) == {"greedy"} and policy.unscripted == []
    assert all(r["samples"] == [] and r["select"] == {} for r in records)


def test_maj_and_select_use_only_the_first_n_of_the_samples(tmp_path):
    """ns=[2]: one set of 2 samples; maj@2/select@2/pass@2 are those of the 4-sample run at N=2."""
    split = qa_split(tmp_path, 64)
    policy = qa_policy([2])
    metrics, _, _ = evaluate(policy, PROMPTS, split, EvalConfig([2], SELECT_TOKENS, True, 1))
    assert policy.unscripted == [], "asked for texts the script does not hold"
    assert metrics["all"] == {m: pytest.approx(mean(OUTCOMES[m])) for m in ("test@1", "maj@2", "pass@2", "select@2")}


# ----------------------------------------------------------------------------------- scripted multi-step env

class StepsEnv(EpisodeEnv):
    """A fake web task without a browser: the agent must act out a task's actions in order.

    Task "two" needs `a` then `b`; task "one" needs `a`. Actions are `Action: <a|b|c|x>`:
    - the next needed action: progress (the page changes); the last one ends the episode with reward 1;
    - `x` gives up: the episode ends with reward 0;
    - another valid action changes nothing but the last action the observation names;
    - unparsable text is an error: the observation stays exactly as it was.
    """

    name = "steps"
    multi_step = True
    TASKS = {"two": ("a", "b"), "one": ("a",)}
    EPISODES = [("two", 0), ("two", 1), ("one", 0)]

    def __init__(self):
        self.task = None

    def episodes(self):
        return list(self.EPISODES)

    def _obs(self) -> Observation:
        return Observation(text=f"Do task {self.task} #{self.seed}", context=f"progress {self.progress}",
                           answer_format="Action: <action>", task_id=self.task, seed=self.seed,
                           last_action=self.last)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task, self.seed, self.progress, self.last = options["task_id"], seed, 0, None
        return self._obs(), {}

    def parse(self, text):
        raw = final_answer(text, "Action")
        return raw if raw in ("a", "b", "c", "x") else None

    def step(self, text):
        action = self.parse(text)
        if action is None:
            return self._obs(), 0.0, False, False, {"parsed": None, "error": "unparsable"}
        self.last = action
        needed = self.TASKS[self.task]
        if action == "x":
            return self._obs(), 0.0, True, False, {"parsed": action}
        if action == needed[self.progress]:
            self.progress += 1
            if self.progress == len(needed):
                return self._obs(), 1.0, True, False, {"parsed": action}
        return self._obs(), 0.0, False, False, {"parsed": action}

    def groups(self, task_id):
        return {"task": task_id}


def state_key(messages) -> str:
    """'<task>#<seed> p<progress> <last action or ->' of a prompt (CoT or select) of StepsEnv."""
    m = re.search(r"Do task (\w+) #(\d+)\nprogress (\d+)(?:\nLast action: (\w+))?", prompt_text(messages))
    return f"{m[1]}#{m[2]} p{m[3]} {m[4] or '-'}"


def steps_split(num_envs: int = 8) -> EnvSplit:
    return EnvSplit("steps", StepsEnv, StepsEnv().episodes(), num_envs, 3, True,
                    {t: {"task": t} for t in StepsEnv.TASKS}, {})


A, B, C, X, JUNK = "go\nAction: a", "go\nAction: b", "go\nAction: c", "quit\nAction: x", "hmm, no action"
# Step budget 3. Episodes: two#0, two#1, one#0. The texts each state (task#seed, progress, last action) gets, in
# order, per rollout:
STEPS_SCRIPT = {
    # test@1 = [T, F, F]
    #   two#0: a, b -> success.  two#1: a, then unparsable: the page and last action stay as they were, so the
    #   greedy episode is stuck and ends after 2 steps (budget 3).  one#0: x -> gives up after 1 step.
    ("eval greedy", "two#0 p0 -"): [A], ("eval greedy", "two#0 p1 a"): [B],
    ("eval greedy", "two#1 p0 -"): [A], ("eval greedy", "two#1 p1 a"): [JUNK],
    ("eval greedy", "one#0 p0 -"): [X],
    # pass@2 (2 sampled episodes each) = [T, F, T]
    #   two#0: sample 0 b (nothing happens), then x (gives up) F; sample 1 a, b T.
    #   two#1: sample 0 c, c, c: the budget runs out F; sample 1 x F.
    #   one#0: sample 0 a T; sample 1 x F.
    ("eval sample x2", "two#0 p0 -"): [B, A], ("eval sample x2", "two#0 p0 b"): [X],
    ("eval sample x2", "two#0 p1 a"): [B],
    ("eval sample x2", "two#1 p0 -"): [C, X], ("eval sample x2", "two#1 p0 c"): [C, C],
    ("eval sample x2", "one#0 p0 -"): [A, X],
    # maj@2 (2 candidates per step, the most frequent action is taken) = [T, F, T]
    #   two#0: {a, b} tie -> a (reached first); {junk, b} -> b (junk does not vote): success.
    #   two#1: {b, b} -> b (nothing happens); {a, c} tie -> a; {c, c} -> c: the budget runs out.
    #   one#0: {junk, a} -> a: success.
    ("eval maj@2", "two#0 p0 -"): [A, B], ("eval maj@2", "two#0 p1 a"): [JUNK, B],
    ("eval maj@2", "two#1 p0 -"): [B, B], ("eval maj@2", "two#1 p0 b"): [A, C], ("eval maj@2", "two#1 p1 a"): [C, C],
    ("eval maj@2", "one#0 p0 -"): [JUNK, A],
    # select@2 (2 candidates per step; the select prompt decides where they disagree) = [T, T, F]
    #   two#0: {a, a} agree -> a, no call; {b, c} -> select says b: success.          1 select call
    #   two#1: {a, b} -> select says b (nothing happens); {a, a} -> a, no call; {c, b} -> select says b:
    #   success on the last step of the budget.                                          2 select calls
    #   one#0: {junk, junk}: nothing parses, so the select prompt decides: x, gives up.   1 select call
    ("eval select@2", "two#0 p0 -"): [A, "also\nAction: a"], ("eval select@2", "two#0 p1 a"): [B, C],
    ("eval select@2", "two#1 p0 -"): [A, B], ("eval select@2", "two#1 p0 b"): [A, A],
    ("eval select@2", "two#1 p1 a"): [C, B],
    ("eval select@2", "one#0 p0 -"): [JUNK, JUNK],
    ("eval select@2 select", "two#0 p1 a"): ["Action: b"],
    ("eval select@2 select", "two#1 p0 -"): ["Action: b"], ("eval select@2 select", "two#1 p1 a"): ["Action: b"],
    ("eval select@2 select", "one#0 p0 -"): ["Action: x"],
}
STEPS_OUTCOMES = {"test@1": [1, 0, 0], "pass@2": [1, 0, 1], "maj@2": [1, 0, 1], "select@2": [1, 1, 0]}
STEPS_OUTPUTS = {  # rollout -> each episode's step outputs
    "greedy": [[A, B], [A, JUNK], [X]],
    "select@2": [[A, "Action: b"], ["Action: b", A, "Action: b"], ["Action: x"]],
}


def steps_policy() -> ScriptedPolicy:
    return ScriptedPolicy(STEPS_SCRIPT, state_key)


@pytest.mark.parametrize("num_envs", [8, 1])
def test_multi_step_metrics_on_known_trajectories(num_envs):
    policy = steps_policy()
    metrics, records, rollouts = evaluate(policy, PROMPTS, steps_split(num_envs),
                                          EvalConfig([2], SELECT_TOKENS, True, 1), 1, "m")
    assert policy.unscripted == [], "asked for texts the script does not hold"
    assert metrics["all"] == {m: pytest.approx(mean(v)) for m, v in STEPS_OUTCOMES.items()}
    assert set(metrics) == {"all", ("task", "two"), ("task", "one")}
    assert metrics[("task", "two")] == {m: mean(v, [0, 1]) for m, v in STEPS_OUTCOMES.items()}
    assert metrics[("task", "one")] == {m: float(v[2]) for m, v in STEPS_OUTCOMES.items()}

    # the greedy episodes: success in 2 steps; stuck after 2 of 3 steps; gave up after 1
    greedy = rollouts["greedy"]
    assert [[s.output for s in t.steps] for t in greedy] == STEPS_OUTPUTS["greedy"]
    assert [t.reward for t in greedy] == [1.0, 0.0, 0.0]
    assert greedy[1].steps[-1].info.get("stuck") is True and greedy[1].steps[-1].parsed is None
    assert not any(s.info.get("stuck") for t in (greedy[0], greedy[2]) for s in t.steps)

    # majority: the chosen text of each step, and the candidates it was chosen from
    maj = rollouts["majority@2"]
    assert [[s.output for s in t.steps] for t in maj] == [[A, B], [B, A, C], [A]]
    assert [[s.info["candidates"] for s in t.steps] for t in maj] == [
        [[A, B], [JUNK, B]], [[B, B], [A, C], [C, C]], [[JUNK, A]]]
    assert [t.reward for t in maj] == [1.0, 0.0, 1.0]

    # select: calls only where the candidates disagreed or none parsed (4 in all), greedy, with the select budget
    sel = rollouts["select@2"]
    assert [[s.output for s in t.steps] for t in sel] == STEPS_OUTPUTS["select@2"]
    assert [t.reward for t in sel] == [1.0, 1.0, 0.0]
    select_calls = [c for c in policy.calls if c["desc"] == "eval select@2 select"]
    assert all(c["greedy"] and c["max_new_tokens"] == SELECT_TOKENS for c in select_calls)
    assert sorted(state_key(p) for c in select_calls for p in c["prompts"]) == [
        "one#0 p0 -", "two#0 p1 a", "two#1 p0 -", "two#1 p1 a"]
    assert all(is_select(p) for c in select_calls for p in c["prompts"])
    assert not any(is_select(p) for c in policy.calls if c not in select_calls for p in c["prompts"])
    first = next(p for c in select_calls for p in c["prompts"] if state_key(p) == "two#0 p1 a")
    assert first == PROMPTS.select_prompt(sel[0].steps[1].observation, [B, C])  # the step's candidates, in order
    # every step of every sampled rollout asks for k=2 sampled candidates; greedy asks for 1 greedy completion
    for c in policy.calls:
        if c["desc"] in ("eval maj@2", "eval select@2"):
            assert not c["greedy"] and all(n % 2 == 0 for n in c["counts"])
        elif c["desc"] == "eval greedy":
            assert c["greedy"] and set(c["counts"]) == {1}

    # pass@2: its own 2 sampled episodes per test episode
    samples = rollouts["samples"]
    assert [(t.task_id, t.seed, t.sample) for t in samples] == [(t, s, j) for t, s in StepsEnv.EPISODES for j in (0, 1)]
    assert [[s.output for s in t.steps] for t in samples] == [[B, X], [A, B], [C, C, C], [X], [A], [X]]
    assert [t.reward for t in samples] == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]

    # records: one per episode, with every rollout's outputs
    assert [(r["task_id"], r["seed"]) for r in records] == StepsEnv.EPISODES
    for i, r in enumerate(records):
        assert r["greedy"] == STEPS_OUTPUTS["greedy"][i] and r["greedy_reward"] == STEPS_OUTCOMES["test@1"][i]
        assert r["majority"]["2"] == {"outputs": [s.output for s in maj[i].steps], "reward": maj[i].reward}
        assert r["select"]["2"] == {"outputs": STEPS_OUTPUTS["select@2"][i], "reward": sel[i].reward}
        assert [s["outputs"] for s in r["samples"]] == [[s.output for s in t.steps] for t in samples[2 * i:2 * i + 2]]
    assert set(rollouts) == {"greedy", "samples", "majority@2", "select@2"}
    assert all(t.iteration == 1 and t.model == "m" for ts in rollouts.values() for t in ts)


def test_multi_step_without_pass_at_n_samples_nothing_for_it():
    policy = steps_policy()
    metrics, records, rollouts = evaluate(policy, PROMPTS, steps_split(), EvalConfig([2], SELECT_TOKENS, False, 1))
    assert set(metrics["all"]) == {"test@1", "maj@2", "select@2"}
    assert metrics["all"] == {m: pytest.approx(mean(STEPS_OUTCOMES[m])) for m in ("test@1", "maj@2", "select@2")}
    assert "samples" not in rollouts and all(r["samples"] == [] for r in records)
    assert not any(c["desc"].startswith("eval sample") for c in policy.calls)


def test_multi_step_select_at_1_is_its_one_candidate_as_one_step_select_at_1_is(monkeypatch):
    monkeypatch.setattr(StepsEnv, "EPISODES", [("one", 0)])
    policy = ScriptedPolicy({("eval greedy", "one#0 p0 -"): [A],
                             ("eval maj@1", "one#0 p0 -"): [JUNK, JUNK, JUNK],
                             ("eval select@1", "one#0 p0 -"): [JUNK, JUNK, JUNK],
                             ("eval select@1 select", "one#0 p0 -"): ["Action: a"]}, state_key)
    metrics, _, _ = evaluate(policy, PROMPTS, steps_split(), EvalConfig([1], SELECT_TOKENS, False, 1))
    assert not any(c["desc"] == "eval select@1 select" for c in policy.calls), "select@1 made a select call"
    assert metrics["all"]["select@1"] == metrics["all"]["maj@1"] == 0.0


# ------------------------------------------------------------------ select asked in several candidate orders

def test_one_step_select_votes_over_candidate_orders(tmp_path):
    """orders=3 at N=3: the select prompt is asked with each rotation of the 3 samples and the most frequent
    parsed choice counts; each order's choice is in the record (the first: the order that orders=1 asks).
    A (5, 3, 3): a selector that takes the first candidate says 5, 3, 3 -> 3: right (orders=1: 5, wrong).
    B (-, -, 7): 8, unparsable, 7 -> a tie of 8 and 7 goes to the earlier order: 8, wrong.
    C (all 2) and D (all 9) agree: no select call."""
    orders = {"A": ["Answer: 5", "Answer: 3", "Answer: 3"], "B": ["Answer: 8", "no idea", "Answer: 7"]}
    policy = qa_policy([3])
    for item_id, texts in orders.items():
        policy.script[("eval select@3", QA[item_id][0])] = texts
    split = qa_split(tmp_path, 4)
    metrics, records, _ = evaluate(policy, PROMPTS, split, EvalConfig([3], SELECT_TOKENS, True, 3))
    assert policy.unscripted == []
    assert metrics["all"]["select@3"] == pytest.approx(mean([1, 0, 1, 0]))
    asked = [p for c in policy.calls if c["desc"] == "eval select@3" for p in c["prompts"]]
    obs = {r["task_id"]: split.make().reset(seed=r["seed"], options={"task_id": r["task_id"]})[0] for r in records}
    assert asked == [PROMPTS.select_prompt(obs[i], SAMPLES[i][s:3] + SAMPLES[i][:s]) for i in "AB" for s in range(3)]
    by_id = {r["task_id"]: r["select"]["3"] for r in records}
    assert (by_id["A"]["output"], by_id["A"]["reward"]) == ("Answer: 3", 1.0)
    assert [o["parsed"] for o in by_id["A"]["orders"]] == ["5", "3", "3"]
    assert [o["reward"] for o in by_id["A"]["orders"]] == [0.0, 1.0, 1.0]
    assert (by_id["B"]["output"], by_id["B"]["reward"]) == ("Answer: 8", 0.0)
    assert [o["parsed"] for o in by_id["B"]["orders"]] == ["8", None, "7"]
    assert "orders" not in by_id["C"] and "orders" not in by_id["D"]


def test_multi_step_select_votes_over_candidate_orders(monkeypatch):
    """A web step with 3 disagreeing candidates (x, a, c) and orders=3: the step is the most frequent parsed
    choice over the 3 rotations (x, a, a -> a: success); asked once (orders=1), the selector says x."""
    from reflection.rollout import Play, rollout

    monkeypatch.setattr(StepsEnv, "EPISODES", [("one", 0)])
    for orders, expected in ((3, 1.0), (1, 0.0)):
        policy = ScriptedPolicy({("sel", "one#0 p0 -"): [X, A, C],
                                 ("sel select", "one#0 p0 -"): ["Action: x", "Action: a", "Action: a"]}, state_key)
        play = Play(decide="select", k=3, select_max_new_tokens=SELECT_TOKENS, select_orders=orders)
        (traj,) = rollout(policy, PROMPTS, steps_split(), play, desc="sel")
        asked = [p for c in policy.calls if c["desc"] == "sel select" for p in c["prompts"]]
        obs = traj.steps[0].observation
        assert asked == [PROMPTS.select_prompt(obs, c) for c in ([X, A, C], [A, C, X], [C, X, A])[:orders]]
        assert traj.reward == expected and traj.steps[0].output == ("Action: a" if orders == 3 else "Action: x")
