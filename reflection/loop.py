"""The R3V loop: warm-up -> (sample, label, pool, build examples, train, evaluate) x iterations.

Iteration 0 is the warm-up: SFT on direct-answer QA for every training question + the teacher's chain of
thought for a subset. Then the newest model samples N solutions per training question, rewards label them,
the pool accumulates across iterations, and iteration k trains a fresh LoRA from the base on QA + teacher +
the self-generated objectives (`method.continue_adapter=true` continues the previous adapter instead).
Modules trained in full during warm-up (a random vision tower) stay part of the base afterwards.

Each stage writes its outputs atomically under `run_dir/iter_K/` and is skipped when they exist, so a killed
run resumes where it stopped. `run_dir/metrics.jsonl` is rebuilt from the per-stage metric files.

Every stage also writes what it cost (`reflection.meter.Meter`): rows `stage_seconds`, `stage_peak_rss_mb` (this process),
`stage_peak_children_pss_mb` (its child processes together: the browsers) and, on a GPU,
`stage_cuda_max_allocated_mb`, with split "run" and a `stage` key (data, train, eval, sample, pairs).
An inference phase starts its environments once (`EnvPool`) and closes them before anything trains.
"""

from __future__ import annotations

import gc
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from agent.models import add_adapter, load_backbone, load_for_inference, load_full_modules
from agent.policy import Generation, Policy, Sampling
from agent.prompts import Prompts
from envs import Trajectory, env_split
from reflection.evaluate import EvalConfig, evaluate, group_members
from reflection.meter import Meter
from reflection.examples import KINDS, Sample, contrast_counts, pool_examples, qa_examples, teacher_examples
from reflection.pool import load_pool, load_trajectories, read_jsonl, samples_path, save_trajectories, write_jsonl
from reflection.distributed import barrier, is_main, main_view
from reflection.rollout import EnvPool, Play, questions, rollout, teacher_rollout
from reflection.train import TrainConfig, train

log = logging.getLogger(__name__)


class Run:
    """A run directory and the config that owns it."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.train = env_split(cfg.env, "train", cfg.warmup.teacher_file)
        self.test = env_split(cfg.env, "test")
        self.prompts = Prompts(**cfg.prompts)
        self.tags = {"env": cfg.env.name, "model": cfg.model.name, "method": cfg.method.name, "seed": cfg.seed}
        self.trackers = trackers(cfg.log_with, self.dir) if is_main() else []
        self.meter = Meter()

    def stage_dir(self, k: int) -> Path:
        return self.dir / f"iter_{k}"

    def adapter_dir(self, k: int) -> Path:
        return self.stage_dir(k) / "adapter"

    def committed(self, k: int, stage: str) -> bool:
        """Whether stage `stage` of iteration k finished. A stage writes its outputs first and its metric rows
        last, so the metrics file is its commit marker: a kill in between leaves outputs without metrics, and
        the stage runs again (its outputs are overwritten), never a stage with outputs but no metric rows."""
        return main_view((self.stage_dir(k) / f"metrics_{stage}.jsonl").exists())  # every process decides alike

    def write_metrics(self, k: int, stage: str, split: str, values: dict[Any, Any]) -> None:
        """Write one stage's metrics, which commits the stage: {metric: value}, or {group: {metric: value}} where
        a group other than "all" is a (key, value) pair that its rows carry, e.g. {"task": "click-test"}. Every
        process calls it; the main process writes, and the others wait until it has. The stage's cost (`Meter`)
        goes with it, as rows of split "run" with a `stage` key."""
        self.meter.enter(stage)  # a stage that did not enter itself is measured from here (a few ms)
        cost = self.meter.figures()
        if is_main():
            self._write_metrics(k, stage, split, values, cost)
        barrier()

    def _write_metrics(self, k: int, stage: str, split: str, values: dict[Any, Any],
                       cost: dict[str, float] | None = None) -> None:
        groups = values if all(isinstance(v, dict) for v in values.values()) else {"all": values}
        rows = [{"iteration": k, "split": split, "metric": m, "value": float(v), **self.tags,
                 **({} if group == "all" else dict([group]))}
                for group, vals in groups.items() for m, v in vals.items()]
        rows += [{"iteration": k, "split": "run", "metric": m, "value": float(v), **self.tags, "stage": stage}
                 for m, v in (cost or {}).items()]
        write_jsonl(self.stage_dir(k) / f"metrics_{stage}.jsonl", rows)
        self.rebuild_metrics()
        for tracker in self.trackers:  # e.g. "test/test@1", "test/test@1/task=click-test", at step k
            tracker.log({f"{split}/{m}" + ("" if group == "all" else f"/{group[0]}={group[1]}"): float(v)
                         for group, vals in groups.items() for m, v in vals.items()}, step=k)
            tracker.log({f"run/{m}/stage={stage}": float(v) for m, v in (cost or {}).items()}, step=k)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()

    def rebuild_metrics(self) -> None:
        files = sorted(self.dir.glob("iter_*/metrics_*.jsonl"), key=lambda p: (int(p.parent.name[5:]), p.name))
        write_jsonl(self.dir / "metrics.jsonl", (row for f in files for row in read_jsonl(f)))

    def policy(self, model, processor) -> Policy:
        s = self.cfg.sample
        sampling = Sampling(s.temperature, s.top_p, s.top_k, s.max_new_tokens)
        return Policy(model, processor, Generation.from_config(self.cfg.generation), sampling, self.cfg.seed)


def trackers(log_with: str | None, run_dir: Path) -> list:
    """accelerate's experiment trackers that metrics also stream to: `log_with=tensorboard` (logs under
    run_dir/logs) or `wandb`; none when null."""
    if not log_with:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    if log_with not in LOGGER_TYPE_TO_CLASS:
        raise ValueError(f"log_with={log_with!r}: use one of {sorted(LOGGER_TYPE_TO_CLASS)}, or null")
    cls = LOGGER_TYPE_TO_CLASS[log_with]
    kwargs = {"logging_dir": str(run_dir / "logs")} if cls.requires_logging_directory else {}
    tracker = cls(run_dir.name, **kwargs)
    tracker.start()
    return [tracker]


def warmup_data(run: Run) -> dict[str, list[Sample]]:
    """QA for every training question and teacher CoT for a seeded subset of `warmup.teacher_examples`
    (null: every episode the teacher has an output for)."""
    cfg = run.cfg
    path = run.stage_dir(0) / "teacher.jsonl"
    if not run.committed(0, "data"):
        run.meter.enter("data")
        trajs = teacher_rollout(run.train)
        if is_main():
            save_trajectories(path, trajs, run.dir)
        run.write_metrics(0, "data", "train", {**run.train.stats, "teacher_episodes": len(trajs)})
    trajs = load_trajectories(path, run.dir)
    if not trajs:
        log.warning("no teacher chain of thought for %s: the warm-up trains direct answers only, so the model has "
                    "little CoT to start from (set warmup.teacher_file=...)", cfg.env.name)
    n = cfg.warmup.teacher_examples
    chosen = trajs if n is None else random.Random(cfg.seed).sample(trajs, min(n, len(trajs)))
    return {"qa": qa_examples(questions(run.train), run.prompts) if cfg.warmup.qa else [],
            "teacher": teacher_examples(chosen, run.prompts)}


def train_stage(run: Run, k: int, data: dict[str, list[Sample]]) -> None:
    """Train iteration k's adapter on the examples; skipped when the stage is committed."""
    cfg = run.cfg
    out = run.adapter_dir(k)
    if run.committed(k, "train"):
        log.info("iteration %d: adapter exists, skipping training", k)
        return
    run.meter.enter("train")
    if is_main():
        shutil.rmtree(out, ignore_errors=True)  # an adapter whose metrics were never written: trained again
    examples = [s for kind in KINDS for s in data.get(kind, [])]
    model, processor = load_backbone(cfg.model)
    init_from = None
    if k > 0 and cfg.method.continue_adapter:
        init_from = run.adapter_dir(k - 1)
    elif k > 0:
        load_full_modules(model, run.adapter_dir(0))  # the warm-up's vision tower is part of the base
    # LoRA's initial weights come from torch's global RNG: seed it here, or a model loaded from the cache (which
    # seeds nothing) gives the same seed a different adapter, and so a different run, each time
    torch.manual_seed(cfg.seed + k)
    model = add_adapter(model, cfg.model, init_from=init_from, train_full=k == 0 or cfg.model.train_full_always)
    epochs = cfg.warmup.epochs if k == 0 else cfg.train.epochs
    tc = TrainConfig(**{**OmegaConf.to_container(cfg.train, resolve=True), "epochs": epochs, "seed": cfg.seed + k})
    tmp = out.with_name("adapter.tmp")  # train writes it from the main process; the rename commits it
    stats = train(model, processor, examples, tc, list(cfg.model.train_modules), desc=f"train iter {k}", save_to=tmp)
    if is_main():
        tmp.rename(out)
    counts = {f"{kind}_examples": float(len(data.get(kind, []))) for kind in KINDS}
    run.write_metrics(k, "train", "train", {**counts, **stats})
    del model
    gc.collect()


def eval_stage(run: Run, k: int, policy: Policy, with_ns: bool) -> None:
    """Evaluate iteration k's model on the test split (test@1, plus the N-sample metrics when `with_ns`). Its
    rollouts share one set of environments, closed when it ends."""
    cfg = run.cfg
    if run.committed(k, "eval"):
        return
    run.meter.enter("eval")
    eval_cfg = EvalConfig(ns=list(cfg.eval.ns) if with_ns else [], select_max_new_tokens=cfg.eval.select_max_new_tokens,
                          select_orders=cfg.eval.select_orders, pass_at_n=cfg.eval.pass_at_n)
    with EnvPool(run.test) as pool:
        metrics, records, rollouts = evaluate(policy, run.prompts, run.test, eval_cfg, k, cfg.model.name, pool)
    if is_main():
        for name, trajs in rollouts.items():  # every test episode as played, for replay
            save_trajectories(run.stage_dir(k) / "eval" / f"{name}.jsonl", trajs, run.dir)
        write_jsonl(run.stage_dir(k) / "eval.jsonl", records)
    run.write_metrics(k, "eval", "test", metrics)
    log.info("iteration %d test: %s", k, "  ".join(f"{m}={v:.3f}" for m, v in metrics["all"].items()))


def _label_counts(trajs: list[Trajectory]) -> dict[str, float]:
    pos = sum(t.label == "positive" for t in trajs)
    return {"positives": pos, "negatives": len(trajs) - pos, "sample_accuracy": pos / len(trajs)}


def sample_stage(run: Run, k: int, policy: Policy) -> None:
    """Sample N solutions per training episode with iteration k's model and label them by reward."""
    cfg = run.cfg
    path = samples_path(run.dir, k)
    if run.committed(k, "sample"):
        return
    run.meter.enter("sample")
    trajs = rollout(policy, run.prompts, run.train, Play(n=cfg.sample.n), k, cfg.model.name, desc=f"sample iter {k}")
    if is_main():
        save_trajectories(path, trajs, run.dir)
    counts = {"all": _label_counts(trajs)}
    for group, idx in group_members([t.task_id for t in trajs], run.train.groups).items():
        counts[group] = _label_counts([trajs[i] for i in idx])
    run.write_metrics(k, "sample", "train", counts)
    log.info("iteration %d samples: %d positive / %d", k, counts["all"]["positives"], len(trajs))


def selftrain(cfg: DictConfig) -> Path:
    """Warm-up, then `iterations` rounds of R3V (or STaR, or nothing for sft). Returns the run dir."""
    run = Run(cfg)
    if is_main():  # a kill after a stage's metrics file but before the rebuild left metrics.jsonl short of its rows
        run.rebuild_metrics()
    warm = warmup_data(run)
    last = cfg.iterations if cfg.method.self_train else 0
    for k in range(last + 1):
        if k == 0:
            data = warm
        else:
            pool = load_pool(run.dir, k - 1)
            if not run.committed(k, "pairs"):  # pairs found and lost, per iteration
                run.meter.enter("pairs")
                run.write_metrics(k, "pairs", "train", contrast_counts(pool))
            data = {**warm, **pool_examples(pool, run.prompts, random.Random(cfg.seed + k), cfg.method.refine,
                                            cfg.method.select, tuple(cfg.method.select_sizes),
                                            cfg.method.select_per_episode)}
        train_stage(run, k, data)
        needs_eval = not run.committed(k, "eval")
        needs_samples = k < last and not run.committed(k, "sample")
        if needs_eval or needs_samples:
            run.meter.enter("eval" if needs_eval else "sample")  # loading the model counts to the first stage
            model, processor = load_for_inference(cfg.model, run.adapter_dir(k))
            policy = run.policy(model, processor)
            eval_stage(run, k, policy, with_ns=k == last or cfg.eval.ns_every_iteration)
            if k < last:
                sample_stage(run, k, policy)
            del model, policy
            gc.collect()
    run.close()
    return run.dir


def evaluate_only(cfg: DictConfig) -> Path:
    """mode=eval: evaluate `adapter` (or the base model when null) on the test split."""
    run = Run(cfg)
    run.meter.enter("eval")
    model, processor = load_for_inference(cfg.model, cfg.adapter)
    eval_stage(run, 0, run.policy(model, processor), with_ns=True)
    run.close()
    return run.dir
