"""Run a policy over environments in batches: (episode, sample) jobs -> trajectories.

Up to `num_envs` episodes step in lockstep; at each step the prompts of every active episode go to the
policy in one `generate` call, identical prompts merged into one prompt with n completions (the N samples
of an episode share their first observation).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Callable

from tqdm.auto import tqdm

from agent.policy import Policy
from agent.prompts import cot_prompt
from envs.episode import EpisodeEnv, Step, Trajectory


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
    """Run every episode n times (sample index 0..n-1); returns the trajectories in job order."""
    jobs = deque((task_id, seed, k) for task_id, seed in episodes for k in range(n))
    total = len(jobs)
    envs = [make_env() for _ in range(min(num_envs, total))]
    active: dict[int, Trajectory] = {}  # env slot -> trajectory in progress
    current: dict[int, object] = {}  # env slot -> current observation
    done: list[Trajectory] = []
    env_name = envs[0].name if envs else ""
    bar = tqdm(total=total, desc=desc, leave=False, disable=max_steps == 1)  # 1 step: generate() shows progress

    def start(slot: int) -> None:
        task_id, seed, k = jobs.popleft()
        obs, info = envs[slot].reset(seed=seed, options={"task_id": task_id})
        current[slot] = obs
        active[slot] = Trajectory(episode_id=f"{task_id}#{seed}#{k}", env=env_name, task_id=task_id, seed=seed,
                                  steps=[], reward=0.0, iteration=iteration, model=model_name, sample=k,
                                  gold=info.get("gold"))

    for slot in range(len(envs)):
        start(slot)
    while active:
        slots = list(active)
        prompts = [cot_prompt(current[s]) for s in slots]
        keys = [json.dumps(p, sort_keys=True) for p in prompts]
        unique = list(dict.fromkeys(keys))
        counts = [keys.count(k) for k in unique]
        outputs = policy.generate([prompts[keys.index(k)] for k in unique], n=counts, greedy=greedy, desc=desc,
                                  progress=max_steps == 1)
        pending = {k: deque(texts) for k, texts in zip(unique, outputs)}
        for slot, key in zip(slots, keys):
            text = pending[key].popleft()
            traj = active[slot]
            obs, reward, terminated, truncated, info = envs[slot].step(text)
            traj.steps.append(Step(observation=current[slot], output=text, parsed=info.get("parsed"),
                                   reward=float(reward), done=terminated or truncated, info=info))
            traj.reward = float(reward)
            if terminated or truncated or len(traj.steps) >= max_steps:
                done.append(active.pop(slot))
                bar.update()
                if jobs:
                    start(slot)
            else:
                current[slot] = obs
    bar.close()
    for env in envs:
        env.close()
    order = {f"{t}#{s}#{k}": i for i, (t, s, k) in enumerate((t, s, k) for t, s in episodes for k in range(n))}
    return sorted(done, key=lambda t: order[t.episode_id])


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
                                   done=terminated or truncated, info=info))
            traj.reward = float(reward)
            if terminated or truncated:
                break
            obs = next_obs
        out.append(traj)
    env.close()
    return out
