"""Policy: N completions per prompt, greedy determinism, batching, reproducible sampling, self-select.

The generation engines themselves are tested in test_generation.py."""

from __future__ import annotations

import pytest

from helpers import PROMPTS, make_policy
from envs.episode import Observation


def _prompts(clevr_dir, k: int):
    images = sorted((clevr_dir / "images").iterdir())[:k]
    return [PROMPTS.cot_prompt(Observation(text=f"Subtract all cubes {i}.", images=[str(p)])) for i, p in enumerate(images)]


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_n_samples_per_prompt_in_one_call(tiny, clevr_dir, engine):
    model, processor = tiny
    policy = make_policy(model, processor, batch_size=4, max_new_tokens=6, seed=0, progress=False,
                    engine=engine)
    prompts = _prompts(clevr_dir, 3)
    out = policy.generate(prompts, n=[1, 3, 5])
    assert [len(o) for o in out] == [1, 3, 5]
    assert all(isinstance(t, str) for o in out for t in o)
    assert len(set(out[2])) > 1  # sampling gives different completions of the same prompt


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_greedy_is_deterministic_and_independent_of_batching(tiny, clevr_dir, engine):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 3)
    a = make_policy(model, processor, batch_size=1, max_new_tokens=8, progress=False, engine=engine)
    b = make_policy(model, processor, batch_size=8, max_new_tokens=8, progress=False, engine=engine)
    assert a.generate(prompts, n=2, greedy=True) == b.generate(prompts, n=2, greedy=True)
    out = a.generate(prompts, n=2, greedy=True)
    assert all(o[0] == o[1] for o in out)


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_sampling_is_reproducible_from_the_seed(tiny, clevr_dir, engine):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 2)
    runs = [make_policy(model, processor, batch_size=4, max_new_tokens=6, seed=s, progress=False,
                   engine=engine).generate(prompts, n=3) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_self_select_asks_the_model_only_where_candidates_disagree(tiny, clevr_dir):
    from reflection.rollout import self_select

    model, processor = tiny
    policy = make_policy(model, processor, batch_size=4, max_new_tokens=6, progress=False)
    asked = []
    generate = policy.generate
    policy.generate = lambda prompts, **kw: asked.append(len(prompts)) or generate(prompts, **kw)
    obs = [p[0]["content"][0] for p in _prompts(clevr_dir, 3)]
    observations = [Observation(text=f"question {i}", images=[o["path"]]) for i, o in enumerate(obs)]
    candidates = [["a\nAnswer: 3", "b\nAnswer: 3"], ["c\nAnswer: 3", "d\nAnswer: 4"], ["e", "f"]]
    parsed = [["3", "3"], ["3", "4"], [None, None]]  # agree; disagree; nothing parsed: the model decides
    out = self_select(policy, PROMPTS, observations, candidates, parsed, max_new_tokens=5, desc="select", progress=False)
    assert asked == [2] and out[0] == ["a\nAnswer: 3"]
    assert out[1][0] not in candidates[1] and out[2][0] not in candidates[2]  # the random model's own text
    expected = generate([PROMPTS.select_prompt(observations[i], candidates[i]) for i in (1, 2)], n=1, greedy=True,
                        max_new_tokens=5)
    assert out[1:] == [texts for texts in expected]


def test_self_select_asks_once_per_candidate_order(tiny, clevr_dir):
    """orders=k: k rotations of each disagreeing list (never more than it has candidates), the first the order
    given; its outputs are exactly those of asking each rotated list alone."""
    from reflection.rollout import rotations, self_select

    assert rotations(["a", "b", "c", "d"], 2) == [["a", "b", "c", "d"], ["c", "d", "a", "b"]]
    assert rotations(["a", "b", "c"], 5) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert rotations(["a", "b"], 1) == [["a", "b"]]
    model, processor = tiny
    policy = make_policy(model, processor, batch_size=8, max_new_tokens=6, progress=False)
    asked = []
    generate = policy.generate
    policy.generate = lambda prompts, **kw: asked.append(prompts) or generate(prompts, **kw)
    obs = [p[0]["content"][0] for p in _prompts(clevr_dir, 2)]
    observations = [Observation(text=f"question {i}", images=[o["path"]]) for i, o in enumerate(obs)]
    candidates = [["a\nAnswer: 1", "b\nAnswer: 2", "c\nAnswer: 3"], ["d\nAnswer: 5", "e\nAnswer: 5"]]
    out = self_select(policy, PROMPTS, observations, candidates, [["1", "2", "3"], ["5", "5"]], max_new_tokens=5,
                      desc="select", progress=False, orders=3)
    assert out[1] == ["d\nAnswer: 5"] and len(out[0]) == 3
    assert asked[0] == [PROMPTS.select_prompt(observations[0], c) for c in rotations(candidates[0], 3)]
    alone = [generate([PROMPTS.select_prompt(observations[0], c)], n=1, greedy=True, max_new_tokens=5)[0][0]
             for c in rotations(candidates[0], 3)]
    assert out[0] == alone


def test_self_select_budget_fits_the_longest_candidate_answer(tiny):
    """A select answer restates a candidate's final line; a long `type(...)` action must fit whole."""
    from reflection.rollout import self_select

    policy = make_policy(*tiny, max_new_tokens=6)
    budgets = []
    policy.generate = lambda prompts, **kw: budgets.append(kw["max_new_tokens"]) or [["x"] for _ in prompts]
    obs = Observation(text="Type the sentence", answer_format="Action: <one action>")
    long_action = 'type(ref=5, "the quick brown fox jumps over the lazy dog, twice over")'
    candidates = [[f"a\nAction: {long_action}", "b\nAction: click(ref=2)"]]
    self_select(policy, PROMPTS, [obs], candidates, [[long_action, "click(ref=2)"]], max_new_tokens=16,
                desc="select", progress=False)
    needed = policy.count_tokens(f"Action: {long_action}")
    assert needed > 16 and budgets == [needed + 1]
    self_select(policy, PROMPTS, [obs], [["a\nAction: click(ref=1)", "b"]], [["click(ref=1)", None]],
                max_new_tokens=16, desc="select", progress=False)
    assert budgets[-1] == 16  # short answers keep the configured budget
