"""Run a policy over environments in batches: (episode, sample) jobs -> trajectories.

Up to `num_envs` episodes run at once, one environment each. At every step the prompts of all active
episodes go to the policy in one `generate` call, identical prompts merged into one prompt with n
completions (the N samples of an episode share their first observation); then every environment steps (and
a finished one resets to its next job) concurrently in threads, so K browsers work in parallel.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from tqdm.auto import tqdm

from agent.policy import Policy
from agent.prompts import cot_prompt
from envs.episode import EpisodeEnv, Observation, Step, Trajectory

Job = tuple[str, int, int]  # (task_id, seed, sample index)


def _job_order(episodes: list[tuple[str, int]], n: int) -> dict[str, int]:
    return {f"{t}#{s}#{k}": i for i, (t, s, k) in enumerate((t, s, k) for t, s in episodes for k in range(n))}


def rollout(
    policy: Policy,
    make_env: Callable[[], EpisodeEnv],
    episodes: list[tuple[str, int]],
    n: int = 1,
    greedy: bool = False,
    num_envs: int = 256,
    max_steps: int = 1,
    iteration: int = 0,
    model_name: str = "",
    desc: str = "rollout",
) -> list[Trajectory]:
    """Run every episode n times (sample index 0..n-1); returns the trajectories in episode order."""
    jobs: deque[Job] = deque((task_id, seed, k) for task_id, seed in episodes for k in range(n))
    total = len(jobs)
    envs = [make_env() for _ in range(min(num_envs, total))]
    active: dict[int, Trajectory] = {}  # env slot -> trajectory in progress
    current: dict[int, Observation] = {}  # env slot -> its current observation
    done: list[Trajectory] = []
    bar = tqdm(total=total, desc=desc, leave=False, disable=max_steps == 1)  # 1 step: generate() shows progress

    def start(slot: int, job: Job) -> None:
        task_id, seed, k = job
        obs, info = envs[slot].reset(seed=seed, options={"task_id": task_id})
        current[slot] = obs
        active[slot] = Trajectory(episode_id=f"{task_id}#{seed}#{k}", env=envs[slot].name, task_id=task_id,
                                  seed=seed, steps=[], reward=0.0, iteration=iteration, model=model_name,
                                  sample=k, gold=info.get("gold"))

    def advance(slot: int, text: str) -> None:
        """Step one environment with the model's text; start its next job when the episode ends."""
        traj = active[slot]
        obs, reward, terminated, truncated, info = envs[slot].step(text)
        traj.steps.append(Step(observation=current[slot], output=text, parsed=info.get("parsed"),
                               reward=float(reward), done=terminated or truncated, info=_jsonable(info)))
        traj.reward = float(reward)
        if terminated or truncated or len(traj.steps) >= max_steps:
            done.append(active.pop(slot))
            bar.update()
        else:
            current[slot] = obs

    with ThreadPoolExecutor(max_workers=max(1, min(len(envs), 32))) as pool:
        list(pool.map(start, range(len(envs)), [jobs.popleft() for _ in envs]))
        while active:
            slots = sorted(active)
            prompts = [cot_prompt(current[s]) for s in slots]
            keys = [json.dumps(p, sort_keys=True) for p in prompts]
            unique = list(dict.fromkeys(keys))
            outputs = policy.generate([prompts[keys.index(k)] for k in unique], n=[keys.count(k) for k in unique],
                                      greedy=greedy, desc=desc, progress=max_steps == 1)
            pending = {k: deque(texts) for k, texts in zip(unique, outputs)}
            list(pool.map(advance, slots, [pending[k].popleft() for k in keys]))
            free = [s for s in slots if s not in active]
            next_jobs = [jobs.popleft() for _ in free[:len(jobs)]]
            list(pool.map(start, free[:len(next_jobs)], next_jobs))
    bar.close()
    for env in envs:
        env.close()
    order = _job_order(episodes, n)
    return sorted(done, key=lambda t: order[t.episode_id])


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of an env's info (records go to JSONL)."""
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}


def teacher_rollout(make_env: Callable[[], EpisodeEnv], episodes: list[tuple[str, int]], max_steps: int = 1,
                    desc: str = "teacher") -> list[Trajectory]:
    """Run the environment's scripted teacher over episodes: the warm-up's chain-of-thought data."""
    env = make_env()
    out = []
    for task_id, seed in tqdm(episodes, desc=desc, leave=False):
        obs, info = env.reset(seed=seed, options={"task_id": task_id})
        traj = Trajectory(episode_id=f"{task_id}#{seed}#teacher", env=env.name, task_id=task_id, seed=seed,
                          steps=[], reward=0.0, model="teacher", gold=info.get("gold"))
        for _ in range(max_steps):
            text = env.teacher()
            next_obs, reward, terminated, truncated, info = env.step(text)
            traj.steps.append(Step(observation=obs, output=text, parsed=info.get("parsed"), reward=float(reward),
                                   done=terminated or truncated, info=_jsonable(info)))
            traj.reward = float(reward)
            if terminated or truncated:
                break
            obs = next_obs
        out.append(traj)
    env.close()
    return out
