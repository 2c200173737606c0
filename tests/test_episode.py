"""The episode interface shared by every environment, on the static-QA environment."""

from __future__ import annotations

import json

import pytest

from envs.episode import Observation, Step, Trajectory


def test_reset_gives_observation_with_image_and_gold(clevr_env):
    task_id, seed = clevr_env.episodes()[0]
    obs, info = clevr_env.reset(seed=seed, options={"task_id": task_id})
    assert isinstance(obs, Observation)
    assert obs.task_id == task_id and obs.text.startswith("Subtract all")
    assert len(obs.images) == 1 and obs.images[0].endswith(".png")
    assert obs.context is None  # text_context is off by default
    assert obs.answer_format == "Answer: <a whole number>"
    assert info["gold"] == clevr_env.items[task_id].answer


def test_step_rewards_correct_answer_and_ends_episode(clevr_env):
    task_id, _ = clevr_env.episodes()[0]
    gold = clevr_env.items[task_id].answer
    clevr_env.reset(options={"task_id": task_id})
    obs, reward, terminated, truncated, info = clevr_env.step(f"Counting...\nAnswer: {gold}")
    assert (obs, reward, terminated, truncated) == (None, 1.0, True, False)
    assert info == {"parsed": gold, "gold": gold}
    with pytest.raises(RuntimeError):  # the episode is over
        clevr_env.step("Answer: 1")


@pytest.mark.parametrize("text", ["", "no answer here", "Answer:", "Answer: many", "\x00\ufffd" * 50, "Answer: " + "9" * 5000])
def test_malformed_output_is_a_wrong_answer(clevr_env, text):
    task_id, _ = clevr_env.episodes()[0]
    clevr_env.reset(options={"task_id": task_id})
    _, reward, terminated, _, info = clevr_env.step(text)
    assert reward == 0.0 and terminated
    assert info["gold"] == clevr_env.items[task_id].answer


def test_wrong_answer_gets_no_reward(clevr_env):
    task_id, _ = clevr_env.episodes()[0]
    wrong = str(int(clevr_env.items[task_id].answer) + 1)
    clevr_env.reset(options={"task_id": task_id})
    _, reward, _, _, info = clevr_env.step(f"Answer: {wrong}")
    assert reward == 0.0 and info["parsed"] == wrong


def test_teacher_solves_every_episode(clevr_env):
    for task_id, seed in clevr_env.episodes():
        clevr_env.reset(seed=seed, options={"task_id": task_id})
        _, reward, _, _, _ = clevr_env.step(clevr_env.teacher())
        assert reward == 1.0, task_id


def test_text_context_gives_the_facts_as_text(clevr_dir):
    from envs.qa import QAEnv, read_items

    env = QAEnv("synth_clevr", read_items(clevr_dir / "train.jsonl"), clevr_dir, text_context=True, breakdown=())
    task_id, _ = env.episodes()[0]
    obs, _ = env.reset(options={"task_id": task_id})
    assert obs.context.startswith("Objects, row by row: 1 ")


def test_unknown_task_id_is_a_clear_error(clevr_env):
    with pytest.raises(KeyError, match="unknown task_id"):
        clevr_env.reset(options={"task_id": "nope"})


def test_trajectory_round_trips_through_json():
    obs = Observation(text="q", images=["a.png"], task_id="t1")
    traj = Trajectory(episode_id="t1#0#2", env="e", task_id="t1", seed=0, reward=1.0, sample=2, gold="3",
                      steps=[Step(observation=obs, output="Answer: 3", parsed="3", reward=1.0, done=True)])
    d = json.loads(json.dumps(traj.to_dict()))
    assert d["label"] == "positive"
    back = Trajectory.from_dict(d)
    assert back == traj and back.answer == "3"


def test_trajectory_records_carry_a_schema_version_and_unknown_ones_are_refused():
    from envs.episode import SCHEMA_VERSION, Trajectory

    traj = Trajectory("t#0#0", "e", "t", 0, [], 0.0)
    record = traj.to_dict()
    assert record["schema"] == SCHEMA_VERSION and Trajectory.from_dict(record) == traj
    del record["schema"]  # runs written before the field existed read as version 1
    assert Trajectory.from_dict(record) == traj
    with pytest.raises(ValueError, match="schema version 99"):
        Trajectory.from_dict({**record, "schema": 99})
