"""The R3V example builders: which episodes yield which objectives, candidate mixes, shuffling, targets."""

from __future__ import annotations

import random
from collections import Counter

from envs.episode import Observation, Step, Trajectory
from helpers import PROMPTS
from reflection.examples import pool_examples, qa_examples, refine_examples, select_examples, sft_examples

FORMAT = "Answer: <a whole number>"


def traj(task: str, answer: str, gold: str, iteration: int = 0, sample: int = 0) -> Trajectory:
    obs = Observation(text=f"question {task}", images=[f"{task}.png"], answer_format=FORMAT, task_id=task)
    output = f"solution {task} it{iteration} s{sample}\nAnswer: {answer}"
    reward = float(answer == gold)
    return Trajectory(episode_id=f"{task}#0#{sample}", env="e", task_id=task, seed=0, reward=reward,
                      iteration=iteration, sample=sample, gold=gold,
                      steps=[Step(observation=obs, output=output, parsed=answer, reward=reward, done=True)])


def user_text(sample) -> str:
    return sample.messages[0]["content"][-1]["text"]


POOL = (
    [traj("all_right", "3", "3", sample=k) for k in range(3)]
    + [traj("all_wrong", "1", "2", sample=k) for k in range(3)]
    + [traj("two_right", "5", "5", sample=0), traj("two_right", "5", "5", sample=1), traj("two_right", "4", "5", sample=2)]
    + [traj("one_right", "7", "7", sample=0), traj("one_right", "6", "7", sample=1), traj("one_right", "8", "7", sample=2)]
    + [traj("pair", "1", "1", sample=0), traj("pair", "2", "1", sample=1)]
)


def test_sft_takes_one_positive_per_episode_the_most_recent():
    pool = POOL + [traj("all_right", "3", "3", iteration=1, sample=0)]
    sft = sft_examples(pool, PROMPTS)
    assert Counter(s.task_id for s in sft) == {"all_right": 1, "two_right": 1, "one_right": 1, "pair": 1}
    newest = next(s for s in sft if s.task_id == "all_right")
    assert newest.target == "solution all_right it1 s0\nAnswer: 3"  # iteration 1 beats iteration 0
    assert all(s.kind == "sft" for s in sft)
    assert user_text(newest).startswith("question all_right\nFirst generate a step-by-step solution")
    assert newest.messages[0]["content"][0] == {"type": "image", "path": "all_right.png"}


def test_refine_needs_a_positive_and_a_negative():
    refine = refine_examples(POOL, PROMPTS)
    assert sorted(s.task_id for s in refine) == ["one_right", "pair", "two_right"]
    ex = next(s for s in refine if s.task_id == "one_right")
    # input: the most recent wrong solution (sample 2); target: the correct one
    assert "Model's prediction:\nsolution one_right it0 s2\nAnswer: 8" in user_text(ex)
    assert "Judge whether the prediction above is correct" in user_text(ex)
    assert ex.target == "solution one_right it0 s0\nAnswer: 7"


def test_select_candidate_mixes_and_targets():
    select = select_examples(POOL, PROMPTS, random.Random(0), sizes=(3,), per_episode=2)
    by_task = Counter(s.task_id for s in select)
    # pair has only 2 samples (no 3-candidate mix); two_right: only 2 pos + 1 neg; one_right: only 1 pos + 2 neg
    assert by_task == {"two_right": 1, "one_right": 1}
    for s in select:
        text = user_text(s)
        assert text.count("Model's prediction ") == 3 and "Model's prediction 3:" in text
        assert text.rstrip().endswith("Which prediction is correct? Give the final answer as: " + FORMAT)
    two = next(s for s in select if s.task_id == "two_right")
    assert two.target == "Answer: 5"  # the final answer only, not a solution
    assert user_text(two).count("Answer: 5") == 2 and user_text(two).count("Answer: 4") == 1
    one = next(s for s in select if s.task_id == "one_right")
    assert one.target == "Answer: 7"
    assert user_text(one).count("Answer: 7") == 1


def test_select_makes_both_mixes_when_possible_and_shuffles():
    pool = [traj("rich", "2", "2", sample=k) for k in range(3)] + [traj("rich", "9", "2", sample=k) for k in range(3, 6)]
    positions = Counter()
    for seed in range(30):
        select = select_examples(pool, PROMPTS, random.Random(seed), sizes=(3,), per_episode=2)
        assert len(select) == 2
        counts = sorted(user_text(s).count("Answer: 2") for s in select)
        assert counts == [1, 2]  # one example 1 pos + 2 neg, one 2 pos + 1 neg
        for s in select:
            blocks = user_text(s).split("Model's prediction ")[1:]
            positions[next(i for i, b in enumerate(blocks) if "Answer: 2" in b)] += 1
    assert len(positions) == 3  # the correct candidate shows up in every position


def test_select_sizes_and_per_episode_cap():
    pool = [traj("big", "2", "2", sample=k) for k in range(4)] + [traj("big", "9", "2", sample=k) for k in range(4, 8)]
    select = select_examples(pool, PROMPTS, random.Random(1), sizes=(2, 3, 4), per_episode=10)
    sizes = Counter(user_text(s).count("Model's prediction ") for s in select)
    assert sizes == {2: 1, 3: 2, 4: 2}
    assert len(select_examples(pool, PROMPTS, random.Random(1), sizes=(2, 3, 4), per_episode=2)) == 2


def test_switches_drop_objectives_and_qa_uses_gold():
    ex = pool_examples(POOL, PROMPTS, random.Random(0), refine=False, select=False, select_sizes=(3,), select_per_episode=2)
    assert ex["refine"] == [] and ex["select"] == [] and len(ex["sft"]) == 4
    t = traj("all_wrong", "1", "2")
    qa = qa_examples([(t.steps[0].observation, t.gold, t.task_id)], PROMPTS)
    assert qa[0].target == "Answer: 2" and "Answer directly, with no explanation" in user_text(qa[0])


def web_traj(actions: list[str], screens: list[str], reward: float, sample: int) -> Trajectory:
    """A multi-step trajectory: one step per action, each seeing the given screen."""
    steps = [Step(observation=Observation(text="Log in", images=[f"{scr}.png"], answer_format="Action: <one action>",
                                          task_id="login", seed=4), output=f"why {a}\nAction: {a}", parsed=a,
                  reward=0.0, done=False) for a, scr in zip(actions, screens)]
    steps[-1].reward, steps[-1].done = reward, True
    return Trajectory(episode_id=f"login#4#{sample}", env="miniwob", task_id="login", seed=4, steps=steps,
                      reward=reward, sample=sample)


def test_multi_step_examples_form_at_the_first_divergence():
    good = web_traj(["type(ref=1)", "type(ref=2)", "click(ref=3)"], ["s0", "s1", "s2"], 1.0, 0)
    bad = web_traj(["type(ref=1)", "click(ref=3)"], ["s0", "s1"], -1.0, 1)
    bad2 = web_traj(["type(ref=1)", "click(ref=9)"], ["s0", "s1"], -1.0, 2)
    pool = [good, bad, bad2]
    sft = sft_examples(pool, PROMPTS)
    assert [s.target.split("Action: ")[1] for s in sft] == ["type(ref=1)", "type(ref=2)", "click(ref=3)"]
    (refine,) = refine_examples(pool, PROMPTS)
    assert refine.messages[0]["content"][0]["path"] == "s1.png"  # step 1, not step 0 where all agreed
    assert "Model's prediction:\nwhy click(ref=9)" in user_text(refine)  # the most recent negative (sample 2)
    assert refine.target == "why type(ref=2)\nAction: type(ref=2)"
    (select,) = select_examples(pool, PROMPTS, random.Random(0), sizes=(3,), per_episode=2)  # 1 pos + 2 neg only
    assert select.target == "Action: type(ref=2)"
    assert select.messages[0]["content"][0]["path"] == "s1.png"


def test_no_contrast_when_the_environment_itself_diverged():
    good = web_traj(["click(ref=1)"], ["s0"], 1.0, 0)
    bad = web_traj(["click(ref=1)"], ["other"], -1.0, 1)  # a different screen at step 0: no shared decision
    assert refine_examples([good, bad], PROMPTS) == [] and select_examples([good, bad], PROMPTS, random.Random(0), (3,), 2) == []
    assert len(sft_examples([good, bad], PROMPTS)) == 1


def test_steps_that_did_nothing_are_not_taught():
    # the positive first wrote garbage, then clicked plain text (screen unchanged), then solved it from s0
    good = web_traj(["garbage", "click(ref=7)", "type(ref=1)", "click(ref=3)"], ["s0", "s0", "s0", "s1"], 1.0, 0)
    good.steps[0].parsed, good.steps[0].info = None, {"error": "invalid action: no line 'Action: <action>'"}
    bad = web_traj(["click(ref=7)", "click(ref=7)"], ["s0", "s0"], -1.0, 1)
    bad2 = web_traj(["type(ref=1)", "click(ref=9)"], ["s0", "s1"], -1.0, 2)
    sft = sft_examples([good, bad], PROMPTS)
    assert [s.target.split("Action: ")[1] for s in sft] == ["type(ref=1)", "click(ref=3)"]
    (refine,) = refine_examples([good, bad], PROMPTS)  # the positive's idle steps are skipped: it decided at its step 2
    assert refine.target == "why type(ref=1)\nAction: type(ref=1)"
    assert "Model's prediction:\nwhy click(ref=7)" in user_text(refine)
    (refine,) = refine_examples([good, bad2], PROMPTS)  # same first action: the decision is at s1
    assert refine.messages[0]["content"][0]["path"] == "s1.png" and refine.target.endswith("click(ref=3)")
    # at s0 the positive candidate is the step that acted; the negative is bad's click on plain text
    (select,) = select_examples([good, bad, bad2, web_traj(["click(ref=8)"], ["s0"], -1.0, 3)], PROMPTS,
                                random.Random(0), sizes=(3,), per_episode=2)
    assert select.target == "Action: type(ref=1)" and "garbage" not in user_text(select)
    assert user_text(select).count("Action: type(ref=1)") == 1  # bad2 chose the right first action: not a negative


def test_a_step_that_changed_only_the_last_action_did_nothing():
    # the positive clicked plain text: the page stayed s0, only the observation's last action changed
    good = web_traj(["click(ref=7)", "type(ref=1)", "click(ref=3)"], ["s0", "s0", "s1"], 1.0, 0)
    good.steps[1].observation.last_action = "click(ref=7)"
    good.steps[2].observation.last_action = "type(ref=1)"
    assert [s.target.split("Action: ")[1] for s in sft_examples([good], PROMPTS)] == ["type(ref=1)", "click(ref=3)"]


def with_last_actions(traj: Trajectory) -> Trajectory:
    """Each observation after the first names the action that led to it, as the MiniWoB env writes it."""
    for prev, step in zip(traj.steps, traj.steps[1:]):
        step.observation.last_action = prev.parsed
    return traj


def test_pages_not_last_actions_decide_where_the_pair_meets():
    """The positive clicked plain text first (its next observation names that click); the negative repeated a
    no-op from the start. Both saw page s0 when they chose differently: that is the decision, not a divergence."""
    from reflection.examples import contrast_counts

    good = with_last_actions(web_traj(["click(ref=7)", "type(ref=1)", "click(ref=3)"], ["s0", "s0", "s1"], 1.0, 0))
    bad = with_last_actions(web_traj(["click(ref=9)", "click(ref=9)"], ["s0", "s0"], -1.0, 1))
    (refine,) = refine_examples([good, bad], PROMPTS)
    assert refine.target == "why type(ref=1)\nAction: type(ref=1)" and "Model's prediction:\nwhy click(ref=9)" in user_text(refine)
    (select,) = select_examples([good, bad], PROMPTS, random.Random(0), sizes=(2,), per_episode=2)
    assert select.target == "Action: type(ref=1)" and "Action: click(ref=9)" in user_text(select)
    other = web_traj(["click(ref=1)"], ["elsewhere"], -1.0, 2)
    same = web_traj(["click(ref=1)"], ["s0"], 1.0, 0)
    same_bad = web_traj(["click(ref=1)"], ["s0"], -1.0, 1)
    for t in (other, same, same_bad):
        t.task_id, t.seed = f"t{t.sample}", t.sample  # three other episodes
    other_good = web_traj(["click(ref=1)"], ["s0"], 1.0, 0)
    other_good.task_id, other_good.seed = "t2", 2
    same_bad.task_id, same_bad.seed = "t0", 0
    counts = contrast_counts([good, bad, other, other_good, same, same_bad])
    assert counts == {"decision_pairs": 1, "pairs_env_diverged": 1, "pairs_same_choices": 1}
