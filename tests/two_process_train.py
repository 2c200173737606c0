"""Launched by tests/test_distributed.py under `accelerate launch`: trains the tiny model on fixed examples with
`train.grad_accum` > 1 and writes, per process, the figures train returned, a fingerprint of its LoRA weights
and how many times it wrote an adapter. Usage: two_process_train.py OUT_DIR GRAD_ACCUM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from peft import PeftModel  # noqa: E402
from PIL import Image  # noqa: E402

from agent.models import add_adapter  # noqa: E402
from agent.offline_models import build_tiny  # noqa: E402
from envs.episode import Observation  # noqa: E402
from helpers import CONF, PROMPTS  # noqa: E402
from reflection.distributed import state  # noqa: E402
from reflection.examples import Sample  # noqa: E402
from reflection.train import TrainConfig, train  # noqa: E402


def main(out: Path, grad_accum: int) -> None:
    rank = state().process_index
    image = out / "image.png"
    if rank == 0:
        Image.new("RGB", (56, 56), (200, 30, 30)).save(image)
    state().wait_for_everyone()
    saves = []
    original = PeftModel.save_pretrained

    def recording(self, *args, **kwargs):
        saves.append(rank)
        return original(self, *args, **kwargs)

    PeftModel.save_pretrained = recording
    obs = Observation(text="Subtract all cubes.", images=[str(image)], answer_format="Answer: <a whole number>")
    samples = [Sample(PROMPTS.cot_prompt(obs), "There are 3 cubes. " * i + f"\nAnswer: {i}", "sft") for i in range(9)]
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    model, processor = build_tiny(**cfg.tiny)
    torch.manual_seed(0)  # the same LoRA initialisation on every process (DDP would broadcast rank 0's anyway)
    model = add_adapter(model, cfg)
    train_cfg = TrainConfig(**{**OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").train),
                               "epochs": 1, "batch_size": 1, "grad_accum": grad_accum, "seed": 0})
    stats = train(model, processor, samples, train_cfg, [], desc="t", save_to=out / "adapter")
    lora = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if p.requires_grad])
    (out / f"rank{rank}.json").write_text(json.dumps({"stats": stats, "saves": saves, "lora": lora.tolist()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
