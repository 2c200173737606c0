"""Check a run's config before any work: every knob's type and range, each problem named by its key.

A bad value found hours into a run (a division by `sample.n=0` after the warm-up trained) costs the hours; a
check here costs milliseconds. `problems(cfg)` lists what is wrong; run.py refuses to start on any.
"""

from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

Check = tuple[str, Callable[[Any], bool], str]  # (dotted key, test, what is allowed)


def _int(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(lo: float, hi: float = float("inf"), lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def _int_list(lo: int, nonempty: bool = False) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and (v or not nonempty) and all(_int(lo)(x) for x in v)


def _one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v in values


CHECKS: list[Check] = [
    ("mode", _one_of("selftrain", "eval"), "selftrain or eval"),
    ("iterations", _int(0), "an integer >= 0"),
    ("seed", _int(0), "an integer >= 0"),
    ("log_with", _optional(lambda v: isinstance(v, str) and v != ""), "null, tensorboard or wandb"),
    ("warmup.teacher_examples", _optional(_int(0)), "null (all) or an integer >= 0"),
    ("warmup.epochs", _number(0, lo_open=True), "a number > 0"),
    ("sample.n", _int(1), "an integer >= 1"),
    ("sample.temperature", _number(0, lo_open=True), "a number > 0"),
    ("sample.top_p", _number(0, 1, lo_open=True), "a number in (0, 1]"),
    ("sample.top_k", _int(0), "an integer >= 0 (0: no top-k)"),
    ("sample.max_new_tokens", _int(1), "an integer >= 1"),
    ("train.epochs", _number(0, lo_open=True), "a number > 0"),
    ("train.batch_size", _int(1), "an integer >= 1"),
    ("train.grad_accum", _int(1), "an integer >= 1"),
    ("train.lr", _number(0, lo_open=True), "a number > 0"),
    ("train.full_lr", _number(0), "a number >= 0"),
    ("train.weight_decay", _number(0), "a number >= 0"),
    ("train.warmup_ratio", _number(0, 1, hi_open=True), "a number in [0, 1)"),
    ("train.max_length", _int(16), "an integer >= 16"),
    ("eval.ns", _int_list(1), "a list of integers >= 1 (may be empty)"),
    ("eval.select_max_new_tokens", _int(1), "an integer >= 1"),
    ("eval.select_orders", _int(1), "an integer >= 1"),
    ("generation.engine", _one_of("fast", "hf"), "fast or hf"),
    ("generation.batch_size", _int(1), "an integer >= 1"),
    ("generation.prefill_call_tokens", _int(0), "an integer >= 0"),
    ("generation.decode_attention", _one_of("auto", "matmul", "sdpa"), "auto, matmul or sdpa"),
    ("method.select_sizes", _int_list(2), "a list of integers >= 2"),
    ("method.select_per_episode", _int(1), "an integer >= 1"),
    ("env.num_envs", _int(1), "an integer >= 1"),
    ("env.max_new_tokens", _int(1), "an integer >= 1"),
    ("env.max_train_episodes", _optional(_int(1)), "null (all) or an integer >= 1"),
    ("env.max_test_episodes", _optional(_int(1)), "null (all) or an integer >= 1"),
]
KIND_CHECKS: dict[str, list[Check]] = {
    "synthetic": [("env.n_train", _int(1), "an integer >= 1"), ("env.n_test", _int(1), "an integer >= 1")],
    "miniwob": [("env.max_steps", _int(1), "an integer >= 1"),
                ("env.tasks", lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of task names"),
                ("env.train_episodes_per_task", _int(1), "an integer >= 1"),
                ("env.test_episodes_per_task", _int(1), "an integer >= 1"),
                ("env.call_timeout", _number(0, lo_open=True), "a number of seconds > 0")],
    "benchmark": [],
}


def problems(cfg: DictConfig) -> list[str]:
    """One line per config value that is out of range or of the wrong type, naming the key and what is allowed."""
    out = []
    for key, test, allowed in CHECKS + KIND_CHECKS.get(cfg.env.get("kind"), []):
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(value, (DictConfig, list)) or OmegaConf.is_list(value):
            value = OmegaConf.to_container(value) if not isinstance(value, list) else value
        if not test(value):
            out.append(f"{key}={value!r}: must be {allowed}")
    return out
