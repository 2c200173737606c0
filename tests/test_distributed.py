"""`accelerate launch` with two CPU processes (gloo): sharded rollouts gathered once, data-parallel training,
one writer; the same samples and metric keys as one process. Gradient accumulation across processes, and the
accelerate config files of conf/accelerate/ (FSDP and DeepSpeed only for their wiring: without GPUs accelerate
runs them as plain DDP, and DeepSpeed is not installed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["env=synth_table", "model=tiny", "iterations=1", "env.n_train=8", "env.n_test=5", "env.max_new_tokens=8",
         "eval.ns=[1,2]", "sample.n=3", "train.batch_size=2", "warmup.teacher_examples=4",
         "eval.select_max_new_tokens=4"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def ids(path: Path) -> list[str]:
    return [json.loads(line)["episode_id"] for line in path.read_text().splitlines()]


def launch(config: str, processes: int = 2) -> list[str]:
    """`accelerate launch` with one of the shipped config files."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "conf" / "accelerate" / f"{config}.yaml"), "--num_processes", str(processes)]


def test_two_processes_write_each_sample_once_and_the_same_metrics(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *SMALL, f"run_dir={one}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    launched = subprocess.run([*launch("ddp"), str(ROOT / "experiments" / "run.py"), *SMALL, f"run_dir={two}"],
                              capture_output=True, text=True, timeout=900)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for f in ("iter_0/teacher.jsonl", "iter_0/samples.jsonl", "iter_1/eval/greedy.jsonl", "iter_1/eval/samples.jsonl"):
        assert ids(two / f) == ids(one / f)  # every episode once, in order: the shards were gathered
    keys = lambda r: sorted((x["iteration"], x["split"], x["metric"]) for x in r)  # noqa: E731
    assert keys(rows(two)) == keys(rows(one))
    train = {(r["iteration"], r["metric"]): r["value"] for r in rows(two) if r["split"] == "train"}
    single = {(r["iteration"], r["metric"]): r["value"] for r in rows(one) if r["split"] == "train"}
    for k in (0, 1):
        assert train[(k, "world_size")] == 2 and single[(k, "world_size")] == 1
        assert train[(k, "final_lr")] == 0.0  # the cosine schedule ran to its end on optimizer steps
        # each process trains on half the batches (the odd one repeated so both take the same steps)
        assert train[(k, "train_steps")] == -(-single[(k, "train_steps")] // 2)
        assert train[(k, "positives")] + train[(k, "negatives")] == single[(k, "positives")] + single[(k, "negatives")] \
            if (k, "positives") in train else True
    assert not list(two.glob("iter_*/adapter.tmp"))


@pytest.mark.parametrize("config", ["ddp", "fsdp"])
def test_two_processes_accumulate_to_the_same_weights_and_one_adapter(config, tmp_path):
    """9 micro-batches of one example, dealt to 2 processes (one repeated: 5 each), grad_accum=2: 3 optimizer
    steps on each (2 + 2 + 1 micro-batches), the cosine ends at 0, both processes end with the same LoRA weights,
    and only the main process writes the adapter. fsdp.yaml runs as DDP here (no GPUs): it checks that the file
    launches and trains, not FSDP."""
    done = subprocess.run([*launch(config), str(ROOT / "tests" / "two_process_train.py"), str(tmp_path), "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        stats = r["stats"]
        assert stats["world_size"] == 2 and stats["train_steps"] == 5 and stats["optimizer_steps"] == 3
        assert stats["final_lr"] == 0.0 and stats["peak_memory_mb"] > 0
    assert ranks[0]["saves"] == [0] and ranks[1]["saves"] == []
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert ranks[0]["lora"] == ranks[1]["lora"]  # gradients were averaged: one model
    assert any(v != 0 for v in ranks[0]["lora"])


def test_the_accelerate_config_files_name_their_backend():
    """Each file in conf/accelerate/ parses as accelerate reads it and names its distributed type; batch size,
    accumulation and FSDP wrap classes are left to the Hydra config and train.py."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    files = {p.stem: load_config_from_file(str(p)) for p in sorted((ROOT / "conf" / "accelerate").glob("*.yaml"))}
    assert {name: c.distributed_type for name, c in files.items()} == {
        "ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP, "deepspeed_zero2": DistributedType.DEEPSPEED}
    fsdp = files["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    ds = files["deepspeed_zero2"].deepspeed_config
    assert ds["zero_stage"] == 2 and "gradient_accumulation_steps" not in ds and "deepspeed_config_file" not in ds
    assert all(c.num_machines == 1 and not c.use_cpu for c in files.values())


def test_deepspeed_gets_the_micro_batch_and_accumulation_from_the_train_config():
    """Without a dataloader, accelerate.prepare fails under DeepSpeed unless train_micro_batch_size_per_gpu is set:
    configure_backend sets it (and the accumulation steps) on the real plugin."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin, DistributedType
    from omegaconf import OmegaConf

    from reflection.train import TrainConfig, configure_backend

    plugin = DeepSpeedPlugin(zero_stage=2)
    assert plugin.is_auto("train_micro_batch_size_per_gpu")  # what prepare refuses
    cfg = TrainConfig(**{**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml").train), "epochs": 1,
                         "batch_size": 3, "grad_accum": 4, "seed": 0})
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                                  state=SimpleNamespace(deepspeed_plugin=plugin))
    configure_backend(accelerator, None, cfg)
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    assert plugin.get_value("train_micro_batch_size_per_gpu") == 3 and plugin.get_value("gradient_accumulation_steps") == 4
