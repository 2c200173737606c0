"""Performance suite: this project against its peers and against the machine, every figure measured side by side in
one run, written as JSON and printed as a table.

    python experiments/bench.py --out bench.json            # the embedded default on MiniWoB++ (< 15 min, 2 cores)
    python experiments/bench.py --quick --out /tmp/b.json   # model=tiny, a few episodes: checks the suite (tests)

Parts (each figure: the median of `--repeats` timed calls after an untimed warm-up, with the range):
- `peak`: the machine's matmul peak, fp32 and bf16 (square matmuls, FLOP/s).
- `browsers`: MiniWoB++ episodes/min of the scripted teacher (no model) on K browsers (`--browsers`, default
  1 4 16) vs one; browsers are started once per K (their start is timed apart) and reused (`EnvPool`). A K whose
  browsers would not fit in the free memory (~450 MiB each) is skipped, with the reason.
- `engine`: our generation engine (`generation.engine=fast`) vs plain `model.generate` (`engine=hf`) on the same
  prompts (first steps of the teacher's episodes, the CoT prompt), greedy, in fp32 (whose completions must be
  identical token for token: checked) and in the model's run dtype (bf16 on a CPU with AMX).
- `batched`: N=6 sampled completions of each prompt in one batched call vs one completion per call, run dtype,
  end-of-sequence ignored so both decode the same number of tokens.
- `trainer`: our trainer (reflection/train.py) vs TRL's `SFTTrainer` on the same examples (the teacher's steps),
  model, LoRA, trainable modules, optimizer groups and LR schedule, and the same batches in the same order (our
  collate: identical padded tensors); tokens/s over the steps after the first, and both loss curves. The losses
  differ by definition: ours is the mean of per-example means, TRL's the mean over target tokens.
- `iteration`: seconds and peak memory per stage of a self-training iteration (experiments/run.py in a child
  process, `Meter` rows): the default config on a subset of `--iteration-episodes` train and test episodes, or a
  finished run's own figures with `--stages-from RUN_DIR`.
- Fractions of the peak: training counts (4 x frozen + 6 x trainable parameters) x tokens FLOPs (the frozen base
  needs no weight gradients; the output head only at target tokens); generation counts 2 x parameters per token
  read or written. Attention and the vision tower are left out (small here).

The ratios: `engine_vs_hf` (fp32, equal outputs), `batched_vs_single`, `browsers_16_vs_1` (the largest K measured
when 16 is skipped, named in `browsers_ratio_k`), `trainer_vs_trl`, `train_peak_fraction`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

TARGETS = {"engine_vs_hf": 3.0, "batched_vs_single": 4.0, "browsers_16_vs_1": 4.0, "trainer_vs_trl": 1.0,
           "train_peak_fraction": 0.30}  # issue #18
BROWSER_MIB = 450  # one Chromium + chromedriver, PSS (shared/MINIWOB_NOTES.md: ~400 MiB)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict[str, Any]:
    """Median and range of repeated measurements (values kept)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": [round(v, 4) for v in values]}


def timed(fn: Callable[[], Any], repeats: int, warmup: Callable[[], Any] | bool = True) -> tuple[list[float], Any]:
    """Seconds of `repeats` calls of fn, and the last call's result. First one untimed call: of `warmup` when it
    is a function (a smaller call that warms the same code: the full one can take a minute), of fn when True."""
    result = None
    if callable(warmup):
        warmup()
    elif warmup:
        result = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def config(overrides: list[str]) -> DictConfig:
    """The run config (conf/, Hydra) with overrides: the single source of every knob the suite uses."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


# ------------------------------------------------------------------ the machine

def matmul_peak(size: int, repeats: int) -> dict[str, Any]:
    """FLOP/s of square matmuls in fp32 and bf16, with torch's threads as they are."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        seconds, _ = timed(lambda: torch.matmul(a, b), repeats)
        flops = [2 * size ** 3 / s for s in seconds]
        out[name] = {"flops": spread(flops), "size": size}
        log(f"matmul {name}: {statistics.median(flops) / 1e9:.0f} GFLOP/s")
    return out


# ------------------------------------------------------------------ browsers

def browsers(cfg: DictConfig, ks: list[int], repeats: int) -> tuple[dict[str, Any], list]:
    """Teacher episodes/min on K browsers; returns the figures and the teacher trajectories of the last K."""
    from envs import env_split
    from reflection.rollout import EnvPool, teacher_rollout

    out: dict[str, Any] = {}
    trajs: list = []
    for k in ks:
        need = k * BROWSER_MIB + 1024
        free = psutil.virtual_memory().available / 2**20
        if free < need:
            out[str(k)] = {"skipped": f"{free:.0f} MiB free, {need} MiB needed for {k} browsers next to the rest"}
            log(f"browsers K={k}: skipped ({out[str(k)]['skipped']})")
            continue
        split = env_split(OmegaConf.merge(cfg.env, {"num_envs": k}), "train")
        with EnvPool(split) as pool:
            start = time.perf_counter()
            envs = pool.take(min(k, len(split.episodes)))
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(envs)) as threads:  # each browser starts on its first reset
                list(threads.map(lambda e: e.reset(seed=0, options={"task_id": split.episodes[0][0]}), envs))
            started = time.perf_counter() - start
            seconds, trajs = timed(lambda: teacher_rollout(split, pool=pool), repeats)
        rates = [len(split.episodes) * 60 / s for s in seconds]
        solved = sum(t.reward > 0 for t in trajs) / max(1, len(trajs))
        out[str(k)] = {"episodes": len(split.episodes), "episodes_per_min": spread(rates),
                       "start_seconds": round(started, 2), "teacher_success": solved}
        log(f"browsers K={k}: {statistics.median(rates):.0f} episodes/min (start {started:.1f} s, solved {solved:.0%})")
    return out, trajs


# ------------------------------------------------------------------ generation

def param_count(model) -> dict[str, int]:
    """Parameters of the language model's body (every matmul a token goes through) and of its output head."""
    head = model.get_output_embeddings()
    head_n = head.weight.numel() if head is not None else 0
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    tied = head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return {"body": total - embed - (0 if tied else head_n), "head": head_n}


def load_model(cfg: DictConfig, dtype: str):
    from agent.models import load_backbone

    model, processor = load_backbone(OmegaConf.merge(cfg.model, {"dtype": dtype}))
    model.eval()
    return model, processor


def make_policy(cfg: DictConfig, model, processor, engine: str):
    from agent.policy import Generation, Policy, Sampling

    s = cfg.sample
    generation = Generation.from_config({**cfg.generation, "engine": engine})
    return Policy(model, processor, generation, Sampling(s.temperature, s.top_p, s.top_k, s.max_new_tokens),
                  cfg.seed, progress=False)


def generate_tokens(policy, prompts: list, n: int, greedy: bool) -> list[list[int]]:
    """The new token ids of every completion (policy.generate's batching, before decoding to text)."""
    texts = [policy.processor.apply_chat_template(p, add_generation_prompt=True) for p in prompts]
    from agent.policy import prompt_images

    return policy.engine.generate(texts, [prompt_images(p) for p in prompts], [n] * len(prompts), greedy,
                                  policy.sampling.max_new_tokens, policy.eos_token_id)


def prompt_tokens(processor, prompts: list) -> list[int]:
    from agent.policy import prompt_images

    return [int(processor(text=[processor.apply_chat_template(p, add_generation_prompt=True)],
                          images=[prompt_images(p)] if prompt_images(p) else None,
                          return_tensors="pt")["attention_mask"].sum()) for p in prompts]


def engine_vs_hf(cfg: DictConfig, prompts: list, repeats: int, run_dtype: str, peak: dict) -> dict[str, Any]:
    """Greedy tokens/s of both engines on the same prompts, fp32 (identical outputs checked) and the run dtype."""
    out: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": cfg.sample.max_new_tokens}
    for dtype in dict.fromkeys(["fp32", run_dtype]):
        model, processor = load_model(cfg, dtype)
        counts = param_count(model)
        lengths = prompt_tokens(processor, prompts)
        figures: dict[str, Any] = {}
        tokens: dict[str, list[list[int]]] = {}
        for engine in ("fast", "hf"):
            policy = make_policy(cfg, model, processor, engine)
            seconds, tokens[engine] = timed(lambda: generate_tokens(policy, prompts, 1, True), repeats,
                                            warmup=lambda: generate_tokens(policy, prompts[:2], 1, True))
            new = sum(len(t) for t in tokens[engine])
            flops = 2 * counts["body"] * (sum(lengths) + new) + 2 * counts["head"] * new
            rate = [new / s for s in seconds]
            figures[engine] = {"seconds": spread(seconds), "new_tokens": new, "tokens_per_s": spread(rate),
                               "peak_fraction": flops / statistics.median(seconds) / peak[dtype]["flops"]["median"]}
            log(f"generate {dtype} {engine}: {statistics.median(rate):.1f} tok/s ({new} tokens)")
        same = sum(a == b for a, b in zip(tokens["fast"], tokens["hf"]))
        figures["identical_outputs"] = same == len(prompts)
        figures["identical_fraction"] = same / len(prompts)
        figures["ratio"] = figures["fast"]["tokens_per_s"]["median"] / figures["hf"]["tokens_per_s"]["median"]
        figures["prompt_tokens"] = {"mean": statistics.mean(lengths), "max": max(lengths)}
        out[dtype] = figures
        del model
    return out


def batched_vs_single(cfg: DictConfig, prompts: list, n: int, repeats: int, run_dtype: str) -> dict[str, Any]:
    """Sampled tokens/s: N completions of each prompt in one call vs one completion per call (our engine)."""
    model, processor = load_model(cfg, run_dtype)
    model.generation_config.eos_token_id = None  # both decode max_new_tokens: the same work
    policy = make_policy(cfg, model, processor, "fast")
    policy.eos_token_id = None
    batched_s, batched = timed(lambda: generate_tokens(policy, prompts, n, False), repeats)
    single_s, single = timed(lambda: [generate_tokens(policy, [p], 1, False) for p in prompts for _ in range(n)],
                             repeats, warmup=lambda: generate_tokens(policy, prompts[:1], 1, False))
    new_b, new_s = sum(len(t) for t in batched), sum(len(t) for c in single for t in c)
    out = {"prompts": len(prompts), "n": n, "dtype": run_dtype,
           "batched": {"seconds": spread(batched_s), "new_tokens": new_b,
                       "tokens_per_s": spread([new_b / s for s in batched_s])},
           "single": {"seconds": spread(single_s), "new_tokens": new_s,
                      "tokens_per_s": spread([new_s / s for s in single_s])}}
    out["ratio"] = out["batched"]["tokens_per_s"]["median"] / out["single"]["tokens_per_s"]["median"]
    log(f"sampling N={n}: batched {out['batched']['tokens_per_s']['median']:.1f} tok/s, one at a time "
        f"{out['single']['tokens_per_s']['median']:.1f} tok/s")
    return out


# ------------------------------------------------------------------ training

@contextmanager
def step_probe(records: list[dict[str, Any]]):
    """Each step our trainer takes: its examples, start time and loss. Wraps `collate` and `example_losses`, the
    module-level names train() calls (instrumentation only, the trainer's code is unchanged). A collate call that
    no loss follows (train() checks which examples fit before batching) is no step and is dropped."""
    import reflection.train as rt

    collate, losses = rt.collate, rt.example_losses
    depth = [0]  # collate calls itself for a batch that lost examples to max_length: one step, one record

    def timed_collate(processor, samples, *args, **kwargs):
        if not depth[0]:
            records.append({"start": time.perf_counter(), "samples": list(samples)})
        depth[0] += 1
        try:
            return collate(processor, samples, *args, **kwargs)
        finally:
            depth[0] -= 1

    def recorded_losses(*args, **kwargs):
        out = losses(*args, **kwargs)
        records[-1]["loss"] = float(out.detach().float().mean())
        return out

    rt.collate, rt.example_losses = timed_collate, recorded_losses
    try:
        yield
    finally:
        rt.collate, rt.example_losses = collate, losses
        records[:] = [r for r in records if "loss" in r]


def fresh_trainable(cfg: DictConfig, dtype: str):
    """The base model with a fresh LoRA and its fully trained modules, from the same seed each time."""
    from agent.models import add_adapter

    torch.manual_seed(cfg.seed)
    model, processor = load_model(cfg, dtype)
    return add_adapter(model, cfg.model, train_full=True), processor


def optimizer_and_schedule(model, tc, train_modules: list[str], steps: int):
    """Our trainer's optimizer groups and LR schedule, built the same way (reflection/train.py)."""
    from transformers import get_cosine_schedule_with_warmup

    from agent.models import full_module_names

    full = set(full_module_names(model, train_modules))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n not in full], "lr": tc.lr},
              {"params": [p for n, p in params if n in full], "lr": tc.full_lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=tc.weight_decay)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, round(tc.warmup_ratio * steps), steps)


def train_flops(model, batches: list[dict[str, torch.Tensor]]) -> float:
    """(4 x frozen + 6 x trainable) body parameters per token, plus 4 x head parameters per target token."""
    counts = param_count(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    targets = sum(int((b["labels"] != -100).sum()) for b in batches)
    return (4 * (counts["body"] - trainable) + 6 * trainable) * tokens + 4 * counts["head"] * targets


def trainer_vs_trl(cfg: DictConfig, samples: list, steps: int, dtype: str, peak: dict) -> dict[str, Any]:
    """Our trainer vs TRL's SFTTrainer on the same batches: the ones our trainer formed, in its order, given to
    TRL one dataset row per batch. Tokens/s over the steps after the first."""
    from reflection.train import TrainConfig, collate, train

    samples = samples[:steps * cfg.train.batch_size]
    tc = TrainConfig(**{**OmegaConf.to_container(cfg.train, resolve=True), "epochs": 1.0, "seed": cfg.seed})
    train_modules = list(cfg.model.train_modules)
    out: dict[str, Any] = {"examples": len(samples), "batch_size": tc.batch_size, "grad_accum": tc.grad_accum,
                           "dtype": dtype}

    model, processor = fresh_trainable(cfg, dtype)
    records: list[dict[str, Any]] = []
    with step_probe(records):
        train(model, processor, samples, tc, train_modules, desc="bench train")
        end = time.perf_counter()
    index = {id(s): i for i, s in enumerate(samples)}
    order = [[index[id(s)] for s in r["samples"]] for r in records]
    collated = [collate(processor, [samples[i] for i in b], tc.max_length).batch for b in order]
    tokens = [int(b["attention_mask"].sum()) for b in collated]  # padding excluded, the same for both
    out["steps"] = len(order)
    out["padding_fraction"] = 1 - sum(tokens) / sum(b["attention_mask"].numel() for b in collated)
    flops = train_flops(model, collated)
    times = [r["start"] for r in records[1:]] + [end]
    out["ours"] = figures_of([t - r["start"] for t, r in zip(times, records)], tokens,
                             [r["loss"] for r in records], flops, peak[dtype])
    log(f"train ours: {out['ours']['tokens_per_s']:.0f} tok/s over {len(order)} steps")
    del model

    try:
        import trl
    except ImportError:
        out["trl"] = {"skipped": "trl is not installed (pip install -e '.[bench]')"}
        log("train TRL: skipped, trl is not installed")
        return out
    model, processor = fresh_trainable(cfg, dtype)
    step_times, losses = trl_train(model, processor, samples, order, tc, train_modules, dtype)
    out["trl"] = figures_of(step_times, tokens, losses, flops, peak[dtype])
    out["trl"]["version"] = trl.__version__
    out["ratio"] = out["ours"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
    log(f"train TRL {trl.__version__}: {out['trl']['tokens_per_s']:.0f} tok/s")
    return out


def figures_of(step_seconds: list[float], tokens: list[int], losses: list[float], flops: float,
               peak: dict) -> dict[str, Any]:
    """Tokens/s and fraction of the peak over the steps after the first (it pays one-time costs), the loss curve."""
    timed_steps = step_seconds[1:] or step_seconds
    timed_tokens = tokens[1:] if len(step_seconds) > 1 else tokens
    seconds = sum(timed_steps)
    share = sum(timed_tokens) / sum(tokens)
    return {"tokens_per_s": sum(timed_tokens) / seconds, "step_seconds": spread(step_seconds),
            "tokens": sum(tokens), "peak_fraction": flops * share / seconds / peak["flops"]["median"],
            "loss_curve": [round(v, 4) for v in losses]}


def trl_train(model, processor, samples: list, order: list[list[int]], tc, train_modules: list[str],
              dtype: str) -> tuple[list[float], list[float]]:
    """TRL's SFTTrainer over the given batches in order (one dataset row = one batch, collated by our collate);
    the seconds and the loss of each step."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from reflection.train import collate

    class InOrder(SFTTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    class Clock(TrainerCallback):
        def __init__(self):
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    optimizer, scheduler = optimizer_and_schedule(model, tc, train_modules, len(order))
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=1, gradient_accumulation_steps=tc.grad_accum,
                         num_train_epochs=1, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
                         bf16=dtype == "bf16", use_cpu=not torch.cuda.is_available(),  # bf16 on a CPU needs it
                         remove_unused_columns=False, dataloader_num_workers=0, seed=tc.seed,
                         max_length=None, dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True)
        trainer = InOrder(model=model, args=args, train_dataset=Dataset.from_dict({"batch": order}),
                          processing_class=processor.tokenizer, optimizers=(optimizer, scheduler),
                          data_collator=lambda rows: collate(processor, [samples[i] for i in rows[0]["batch"]],
                                                             tc.max_length).batch,
                          callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the suite's
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return [e - s for s, e in zip(clock.starts, clock.ends)], losses


# ------------------------------------------------------------------ a self-training iteration

def iteration(overrides: list[str], run_dir: Path, timeout: int) -> dict[str, Any]:
    """Run experiments/run.py with `overrides` in a child process; its stage rows (seconds, peak memory)."""
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), *overrides, f"run_dir={run_dir}"]
    log("iteration: " + " ".join(cmd[1:]))
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"the iteration run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = stage_rows(run_dir)
    out["overrides"] = overrides
    out["wall_seconds"] = time.perf_counter() - start
    return out


def stage_rows(run_dir: Path) -> dict[str, Any]:
    """{iteration/stage: {metric: value}} from a run's metrics (the `Meter` rows), and their sum of seconds."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stages: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["split"] == "run" and "stage" in r:
            stages.setdefault(f"iter_{r['iteration']}/{r['stage']}", {})[r["metric"]] = r["value"]
    if not stages:
        raise ValueError(f"{run_dir}/metrics.jsonl has no stage rows (a run of an r3v older than its Meter)")
    return {"run_dir": str(run_dir), "stages": stages,
            "seconds_total": sum(v["stage_seconds"] for v in stages.values())}


# ------------------------------------------------------------------ the report

def ratios(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "engine" in report:
        out["engine_vs_hf"] = report["engine"]["fp32"]["ratio"]
        out["engine_vs_hf_identical_outputs"] = report["engine"]["fp32"]["identical_outputs"]
        dtype = report["run_dtype"]
        if dtype in report["engine"] and dtype != "fp32":
            out[f"engine_vs_hf_{dtype}"] = report["engine"][dtype]["ratio"]
    if "batched" in report:
        out["batched_vs_single"] = report["batched"]["ratio"]
    measured = [k for k, v in report.get("browsers", {}).items() if "episodes_per_min" in v]
    if "1" in measured and len(measured) > 1:
        top = max(measured, key=int)
        rate = lambda k: report["browsers"][k]["episodes_per_min"]["median"]  # noqa: E731
        out["browsers_16_vs_1"] = rate(top) / rate("1")
        out["browsers_ratio_k"] = int(top)
        for k in measured[1:]:
            out[f"browsers_{k}_vs_1"] = rate(k) / rate("1")
    if "trainer" in report:
        if "ratio" in report["trainer"]:
            out["trainer_vs_trl"] = report["trainer"]["ratio"]
        out["train_peak_fraction"] = report["trainer"]["ours"]["peak_fraction"]
    return out


def table(report: dict[str, Any]) -> str:
    lines = ["| ratio | measured | target | met |", "|---|---|---|---|"]
    for name, value in report["ratios"].items():
        target = TARGETS.get(name)
        if isinstance(value, bool) or not isinstance(value, float):
            lines.append(f"| {name} | {value} | | |")
            continue
        met = "" if target is None else ("yes" if value >= target else "no")
        lines.append(f"| {name} | {value:.3g} | {'' if target is None else f'>= {target:g}'} | {met} |")
    for stage, v in report.get("iteration", {}).get("stages", {}).items():
        lines.append(f"| {stage} | {v['stage_seconds']:.1f} s, {v['stage_peak_rss_mb']:.0f} MiB "
                     f"(+{v.get('stage_peak_children_pss_mb', 0):.0f} MiB browsers) | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--quick", action="store_true", help="model=tiny, few episodes and prompts: checks the suite")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per figure (default 3; quick 2)")
    parser.add_argument("--browsers", type=int, nargs="+", default=None, help="K values (default 1 4 16; quick 1 2)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per generate call (default 16; quick 4)")
    parser.add_argument("--single-prompts", type=int, default=None, help="prompts of the N=6 comparison (default 2)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps per trainer (default 8; quick 3)")
    parser.add_argument("--iteration-episodes", type=int, default=None,
                        help="train and test episodes of the timed iteration (a seeded subset; default 10; quick 2)")
    parser.add_argument("--stages-from", type=Path, default=None,
                        help="read the stage figures of this finished run instead of running an iteration")
    parser.add_argument("--parts", nargs="+", default=["peak", "browsers", "engine", "batched", "trainer", "iteration"])
    parser.add_argument("overrides", nargs="*", help="config overrides (Hydra syntax), e.g. model=tiny")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # rollout and training bars would bury the suite's lines
    quick = args.quick
    repeats = args.repeats or (2 if quick else 3)
    ks = args.browsers or ([1, 2] if quick else [1, 4, 16])
    n_prompts = args.prompts or (4 if quick else 16)
    single_prompts = args.single_prompts or (1 if quick else 2)
    steps = args.train_steps or (3 if quick else 8)
    episodes = args.iteration_episodes or (2 if quick else 10)
    base = ["env=miniwob", *(["model=tiny", "env.max_new_tokens=12", "train.batch_size=2"] if quick else []),
            *args.overrides]
    cfg = config(base)

    from agent.models import resolve_dtype
    from agent.prompts import Prompts
    from reflection.examples import teacher_examples

    run_dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[resolve_dtype(cfg.model.dtype)]
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join(["python", "experiments/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": quick, "model": cfg.model.name, "run_dtype": run_dtype, "repeats": repeats,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "arch": platform.machine(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "load_average_at_start": os.getloadavg()},
    }
    with tempfile.TemporaryDirectory(prefix="r3v-bench-") as tmp:
        cfg = config([*base, f"run_dir={tmp}/run", "env.train_episodes_per_task=" + ("2" if quick else "8")])
        if quick:
            cfg = OmegaConf.merge(cfg, {"env": {"tasks": ["click-test", "enter-text"]}})
        report["peak"] = matmul_peak(512 if quick else 2048, repeats) if "peak" in args.parts else None
        peak = report["peak"] or matmul_peak(256, 1)
        trajs: list = []
        if "browsers" in args.parts:
            report["browsers"], trajs = browsers(cfg, ks, repeats)
        if not trajs and {"engine", "batched", "trainer"} & set(args.parts):  # prompts and examples need episodes
            _, trajs = browsers(cfg, [min(4, max(ks))], 1)
        prompt_set = Prompts(**cfg.prompts)
        firsts = [t.steps[0].observation for t in trajs if t.steps]
        spaced = firsts[::max(1, len(firsts) // n_prompts)][:n_prompts]  # spread over the tasks
        prompts = [prompt_set.cot_prompt(o) for o in spaced]
        failed: dict[str, str] = {}

        def part(name: str, fn: Callable[[], Any]) -> None:
            """Measure one part; a part that fails is recorded and the others still run (then exit status 1)."""
            if name not in args.parts:
                return
            try:
                report[name] = fn()
            except Exception as e:  # noqa: BLE001 (reported in the JSON and by the exit status)
                failed[name] = f"{type(e).__name__}: {e}"[:2000]
                log(f"{name} failed: {failed[name]}")

        examples = teacher_examples(trajs, prompt_set)
        random.Random(cfg.seed).shuffle(examples)
        subset = [f"env.max_train_episodes={episodes}", f"env.max_test_episodes={episodes}"]
        extra = (["model=tiny", "env.max_new_tokens=12", "env.tasks=[click-test,enter-text]", "eval.ns=[2]",
                  "env.num_envs=2", "train.batch_size=2", "sample.n=2"] if quick else [])
        # the iteration first: its child process then runs beside a parent that has loaded no model yet (after the
        # model parts, the parent held ~6 GB that the allocator had not returned)
        part("iteration", lambda: stage_rows(args.stages_from) if args.stages_from else iteration(
            ["env=miniwob", *subset, *extra, *args.overrides], Path(tmp) / "iteration", timeout=1800))
        part("engine", lambda: engine_vs_hf(cfg, prompts, repeats, run_dtype, peak))
        part("batched", lambda: batched_vs_single(cfg, prompts[:single_prompts], 6, repeats, run_dtype))
        part("trainer", lambda: trainer_vs_trl(cfg, examples, steps, run_dtype, peak))
        if failed:
            report["failed"] = failed
    report["ratios"] = ratios(report)
    report["targets"] = TARGETS
    report["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(table(report))
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
