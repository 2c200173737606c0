"""Run a policy over environments in batches: (episode, sample) jobs -> trajectories.

Up to `num_envs` episodes run at once, one environment each. At every step the prompts of all active
episodes go to the policy in one `generate` call, identical prompts merged into one prompt with n
completions (the N samples of an episode share their first observation); then every environment steps (and
a finished one resets to its next job) concurrently in threads, so K browsers work in parallel.

Environments come from an `EnvPool`: the rollouts of one phase (an evaluation's greedy, majority and select
rollouts) pass the same pool and reuse its browsers, instead of starting K new ones per rollout (~20 s for
16 on 2 cores). The phase closes the pool before training, so the browsers' memory is free for it. A rollout
given no pool starts and closes its own.

How a step's text is chosen (`decide`):
- "sample": one completion (greedy or sampled): test@1 and self-training samples. A greedy episode whose
  step left the observation unchanged (the page and the last action) ends there (`info["stuck"]`): its
  prompt would be the same, so the agent would repeat that step until the step budget ran out.
- "majority": k sampled completions, the most frequent parsed answer/action wins (ties: the first reached).
- "select": k sampled completions go into the self-select prompt, whose greedy output is the step (when
  they all agree there is nothing to select: the first one is the step). With `select_orders` > 1 the
  prompt is asked once per rotation of the candidates and the most frequent choice is the step.
"""

from __future__ import annotations

import dataclasses
import json
import queue
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from agent.policy import Policy
from agent.prompts import Messages, Prompts, final_line
from envs import EnvSplit
from envs.episode import EnvFailure, EpisodeEnv, NoTeacher, Observation, Step, Trajectory
from reflection.distributed import sharded

Job = tuple[str, int, int]  # (task_id, seed, sample index)
DECISIONS = ("sample", "majority", "select")
MAX_THREADS = 32  # environments stepped at once; more threads only add switching (QA splits ask for 4096)


class EnvPool:
    """The environments of one split, made on demand and kept alive until `close()`: every rollout of a phase
    that is given the pool reuses them (a MiniWoB env keeps its browser between episodes and resets to any
    task and seed, so reuse leaves each episode as a fresh environment would play it).

        with EnvPool(split) as pool:
            rollout(policy, prompts, split, Play(greedy=True), pool=pool)
            rollout(policy, prompts, split, Play(n=3), pool=pool)   # same browsers
    """

    def __init__(self, split: EnvSplit):
        self.split = split
        self.envs: list[EpisodeEnv] = []
        self.made = 0  # environments made over the pool's life (a test checks reuse with it)

    def take(self, n: int) -> list[EpisodeEnv]:
        """The first n environments, making the missing ones."""
        while len(self.envs) < n:
            self.envs.append(self.split.make())
            self.made += 1
        return self.envs[:n]

    def close(self) -> None:
        """End every environment (their browsers, by pid); a later `take` makes new ones."""
        envs, self.envs = self.envs, []
        for env in envs:
            env.close()

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def complete(policy: Policy, prompts: list[Messages], n: int, greedy: bool, desc: str,
             progress: bool = True) -> list[list[str]]:
    """n completions per prompt; identical prompts are generated once, with their completions pooled."""
    keys = [json.dumps(p, sort_keys=True) for p in prompts]
    unique = list(dict.fromkeys(keys))
    outputs = policy.generate([prompts[keys.index(k)] for k in unique], n=[keys.count(k) * n for k in unique],
                              greedy=greedy, desc=desc, progress=progress)
    pending = {k: deque(texts) for k, texts in zip(unique, outputs)}
    return [[pending[k].popleft() for _ in range(n)] for k in keys]


def majority_index(parsed: list[str | None]) -> int:
    """Index of the first candidate whose parsed answer/action is the most frequent one (unparsable ones do not
    vote; 0 when none parses)."""
    votes = Counter(p for p in parsed if p is not None)
    if not votes:
        return 0
    top = max(votes.values())
    return next(i for i, p in enumerate(parsed) if p is not None and votes[p] == top)


def majority_text(env: EpisodeEnv, candidates: list[str]) -> str:
    """The first candidate whose parsed answer/action is the most frequent one (unparsable ones do not vote)."""
    return candidates[majority_index([env.parse(c) for c in candidates])]


def self_select(policy: Policy, prompts: Prompts, observations: list[Observation], candidates: list[list[str]],
                parsed: list[list[str | None]], max_new_tokens: int, desc: str, progress: bool = True,
                orders: int = 1) -> list[list[str]]:
    """The self-select prompt's greedy output for each observation's candidates (`parsed`: their answers or
    actions), once per candidate order: `orders` rotations of the list (the first is the order given; more
    than there are candidates repeat none), so a selector's bias to a position can be voted out: the callers
    take the most frequent parsed choice (`majority_index`).
    One candidate, or candidates that all give the same answer/action, leave nothing to choose: the first is
    taken without a select call (so select@1 is the one sample, as for one-step episodes). The budget is
    `max_new_tokens`, or more when a candidate's final line is longer (a `type(...)` action restating its
    text): the answer must fit whole."""
    out: list[list[str]] = [[cands[0]] if len(p) == 1 or (len(set(p)) == 1 and p[0] is not None) else []
                            for cands, p in zip(candidates, parsed)]
    todo = [i for i, texts in enumerate(out) if not texts]
    if todo:
        longest = max((policy.count_tokens(final_line(observations[i], a)) for i in todo for a in parsed[i] if a),
                      default=0)
        jobs = [(i, rotated) for i in todo for rotated in rotations(candidates[i], orders)]
        chosen = policy.generate([prompts.select_prompt(observations[i], rotated) for i, rotated in jobs], n=1,
                                 greedy=True, max_new_tokens=max(max_new_tokens, longest + 1), desc=desc,
                                 progress=progress)
        for (i, _), (text,) in zip(jobs, chosen):
            out[i].append(text)
    return out


def rotations(items: list[str], orders: int) -> list[list[str]]:
    """`orders` rotations of `items` (at most len(items)), their starts spread evenly; the first is `items`."""
    k = min(orders, len(items))
    return [items[s:] + items[:s] for s in (r * len(items) // k for r in range(k))]


def act(policy: Policy, prompts: Prompts, observations: list[Observation], envs: list[EpisodeEnv], play: Play,
        desc: str, progress: bool) -> list[tuple[str, list[str]]]:
    """The text each environment steps with, and the candidates it was chosen from."""
    cot = [prompts.cot_prompt(o) for o in observations]
    if play.decide == "sample":
        return [(texts[0], []) for texts in complete(policy, cot, 1, play.greedy, desc, progress)]
    candidates = complete(policy, cot, play.k, False, desc, progress)
    if play.decide == "majority":
        return [(majority_text(env, cands), cands) for env, cands in zip(envs, candidates)]
    parsed = [[env.parse(c) for c in cands] for env, cands in zip(envs, candidates)]
    chosen = self_select(policy, prompts, observations, candidates, parsed, play.select_max_new_tokens,
                         f"{desc} select", progress, play.select_orders)
    return [(outputs[majority_index([env.parse(o) for o in outputs])], cands)
            for env, outputs, cands in zip(envs, chosen, candidates)]


@dataclass(frozen=True)
class Play:
    """How a rollout plays each episode: `n` independent trajectories per (task_id, seed), each step's text
    chosen by `decide` (see the module docstring) from `k` candidates."""

    greedy: bool = False
    n: int = 1
    decide: str = "sample"  # one of DECISIONS
    k: int = 1
    select_max_new_tokens: int | None = None  # decide="select": the select prompt's budget (eval.select_max_new_tokens)
    select_orders: int = 1  # decide="select": candidate orders voted over (eval.select_orders)

    def __post_init__(self) -> None:
        if self.decide not in DECISIONS:
            raise ValueError(f"unknown decision rule {self.decide!r}: one of {DECISIONS}")
        if self.decide == "select" and self.select_max_new_tokens is None:
            raise ValueError("decide='select' needs select_max_new_tokens")


def rollout(policy: Policy, prompts: Prompts, split: EnvSplit, play: Play, iteration: int = 0,
            model_name: str = "", desc: str = "rollout", pool: EnvPool | None = None) -> list[Trajectory]:
    """Play every episode of `split` `play.n` times (sample index 0..n-1), prompting with `prompts`; returns the
    trajectories in episode order, stamped with `iteration` and `model_name`. Under several processes each
    plays its share of the episodes, and every process gets all the trajectories. `pool`: environments of
    this split to reuse (left open); without one the rollout makes its own and closes them."""
    own = pool is None
    pool = EnvPool(split) if own else pool
    try:
        return sharded(split.episodes, lambda mine: _rollout(
            policy, prompts, dataclasses.replace(split, episodes=mine), play, iteration, model_name, desc, pool))
    finally:
        if own:  # browsers end even when a rollout fails
            pool.close()


def _rollout(policy: Policy, prompts: Prompts, split: EnvSplit, play: Play, iteration: int, model_name: str,
             desc: str, pool: EnvPool) -> list[Trajectory]:
    episodes, n, max_steps = split.episodes, play.n, split.max_steps
    jobs: deque[Job] = deque((task_id, seed, j) for task_id, seed in episodes for j in range(n))
    total = len(jobs)
    envs = pool.take(min(split.num_envs, total))
    active: dict[int, Trajectory] = {}  # env slot -> trajectory in progress
    current: dict[int, Observation] = {}  # env slot -> its current observation
    done: list[Trajectory] = []
    bar = tqdm(total=total, desc=desc, leave=False, disable=not split.multi_step)  # else generate() shows it
    deterministic = play.greedy and play.decide == "sample"

    def start(slot: int, job: Job) -> None:
        task_id, seed, j = job
        traj = Trajectory(episode_id=f"{task_id}#{seed}#{j}", env=envs[slot].name, task_id=task_id, seed=seed,
                          steps=[], reward=0.0, iteration=iteration, model=model_name, sample=j)
        try:
            obs, info = envs[slot].reset(seed=seed, options={"task_id": task_id})
        except EnvFailure as e:  # recorded as a failed episode; the slot takes the next job
            traj.error = str(e)
            done.append(traj)
            bar.update()
            return
        traj.gold = info.get("gold")
        current[slot], active[slot] = obs, traj

    def advance(slot: int, choice: tuple[str, list[str]]) -> None:
        """Step one environment with the chosen text; the slot frees up when its episode ends."""
        text, candidates = choice
        traj = active[slot]
        obs, reward, terminated, truncated, info = envs[slot].step(text)
        info = _jsonable(info)
        if candidates:
            info["candidates"] = candidates
        traj.steps.append(Step(observation=current[slot], output=text, parsed=info.get("parsed"),
                               reward=float(reward), done=terminated or truncated, info=info))
        traj.reward = float(reward)
        # A greedy agent's prompt is the current observation: when its step left that unchanged, it would write
        # the same step forever. End the episode now instead of spending the rest of the step budget.
        stuck = deterministic and not (terminated or truncated) and obs == current[slot]
        if stuck:
            info["stuck"] = True
        if terminated or truncated or stuck or len(traj.steps) >= max_steps:
            done.append(active.pop(slot))
            bar.update()
        else:
            current[slot] = obs

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(envs), MAX_THREADS))) as threads:
            while active or jobs:
                free = [s for s in range(len(envs)) if s not in active][:len(jobs)]
                list(threads.map(start, free, [jobs.popleft() for _ in free]))
                if not active:
                    continue
                slots = sorted(active)
                choices = act(policy, prompts, [current[s] for s in slots], [envs[s] for s in slots], play, desc,
                              progress=not split.multi_step)
                list(threads.map(advance, slots, choices))
    finally:
        bar.close()
    order = {f"{t}#{s}#{j}": i for i, (t, s, j) in enumerate((t, s, j) for t, s in episodes for j in range(n))}
    return sorted(done, key=lambda t: order[t.episode_id])


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of an env's info (records go to JSONL)."""
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}


def teacher_rollout(split: EnvSplit, desc: str = "teacher", pool: EnvPool | None = None) -> list[Trajectory]:
    """Run the environment's teacher over the split's episodes: the warm-up's chain-of-thought data. Episodes
    with no teacher output (a benchmark item without a rationale) are left out. Sharded like `rollout`.

    Multi-step episodes (browsers) play on up to `num_envs` environments at once, one thread each: a browser
    step is mostly waiting on Chromium. One-step QA plays on one environment (its steps are pure Python, and
    threads would only contend for the GIL). `pool`: environments to reuse (left open), as for `rollout`."""
    own = pool is None
    pool = EnvPool(split) if own else pool

    def play(episodes: list[tuple[str, int]]) -> list[Trajectory | None]:
        width = min(split.num_envs, MAX_THREADS, len(episodes)) if split.multi_step else 1
        free: queue.Queue[EpisodeEnv] = queue.Queue()
        for env in pool.take(max(1, width)):
            free.put(env)
        bar = tqdm(total=len(episodes), desc=desc, leave=False)

        def one(episode: tuple[str, int]) -> Trajectory | None:
            env = free.get()  # an idle environment; each thread holds one for a whole episode
            try:
                return _teacher_episode(env, *episode, split.max_steps)
            finally:
                free.put(env)
                bar.update()

        try:
            if width <= 1:
                return [one(e) for e in episodes]
            with ThreadPoolExecutor(max_workers=width) as threads:
                return list(threads.map(one, episodes))  # in episode order, whichever env played each
        finally:
            bar.close()

    try:
        return [t for t in sharded(split.episodes, play) if t is not None]
    finally:
        if own:
            pool.close()


def _teacher_episode(env: EpisodeEnv, task_id: str, seed: int, max_steps: int) -> Trajectory | None:
    traj = Trajectory(episode_id=f"{task_id}#{seed}#teacher", env=env.name, task_id=task_id, seed=seed, steps=[],
                      reward=0.0, model="teacher")
    try:
        obs, info = env.reset(seed=seed, options={"task_id": task_id})
    except EnvFailure as e:
        traj.error = str(e)
        return traj
    traj.gold = info.get("gold")
    for _ in range(max_steps):
        try:
            text = env.teacher()
        except NoTeacher:
            return None
        next_obs, reward, terminated, truncated, info = env.step(text)
        traj.steps.append(Step(observation=obs, output=text, parsed=info.get("parsed"), reward=float(reward),
                               done=terminated or truncated, info=_jsonable(info)))
        traj.reward = float(reward)
        if terminated or truncated:
            break
        obs = next_obs
    return traj


def questions(split: EnvSplit) -> list[tuple[Observation, str, str]]:
    """(observation, gold answer, task_id) of every episode of a one-step split that has a gold answer: the
    warm-up's direct-answer data."""
    if split.multi_step:
        return []
    env = split.make()
    try:
        firsts = [(*env.reset(seed=seed, options={"task_id": task_id}), task_id) for task_id, seed in split.episodes]
    finally:
        env.close()
    return [(obs, info["gold"], task_id) for obs, info, task_id in firsts if info.get("gold") is not None]
