"""Supervised training of a LoRA (and any fully trained modules) on examples; loss on target tokens only.

Runs under `accelerate` (one CPU process, one GPU, or `accelerate launch` on several GPUs).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from agent.models import autocast, full_module_names
from agent.policy import prompt_images
from reflection.examples import Sample

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that carry no loss


@dataclass
class TrainConfig:
    """One training stage's settings: the `train` block of the config (the warm-up sets its own epochs)."""

    epochs: float
    batch_size: int
    grad_accum: int
    lr: float  # LoRA weights
    full_lr: float  # fully trained modules (a random vision tower learns from scratch)
    weight_decay: float
    warmup_ratio: float
    max_length: int
    seed: int


def collate(processor, samples: list[Sample], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise prompt and target separately and concatenate, so the label mask is exact: every prompt
    token (images included) is IGNORE, every target token (and the end-of-turn token) is learned."""
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eos is None or eos == tokenizer.unk_token_id:
        eos = tokenizer.eos_token_id
    tokenizer.padding_side = "right"
    prompts = [processor.apply_chat_template(s.messages, add_generation_prompt=True) for s in samples]
    images = [prompt_images(s.messages) for s in samples]
    enc = processor(text=prompts, images=images if any(images) else None, padding=True, return_tensors="pt")
    targets = [tokenizer(s.target, add_special_tokens=False)["input_ids"] + [eos] for s in samples]
    lengths = enc["attention_mask"].sum(1).tolist()
    rows = []
    for i, (plen, target) in enumerate(zip(lengths, targets)):
        ids = enc["input_ids"][i, :plen].tolist() + target
        labels = [IGNORE] * plen + target
        mm = enc["mm_token_type_ids"][i, :plen].tolist() + [0] * len(target) if "mm_token_type_ids" in enc else None
        if len(ids) > max_length:  # cut the end of the target, never the prompt's image tokens
            ids, labels, mm = ids[:max_length], labels[:max_length], mm[:max_length] if mm else None
        rows.append((ids, labels, mm))
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    batch = dict(enc)
    batch["input_ids"] = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows])
    batch["attention_mask"] = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
    batch["labels"] = torch.tensor([r[1] + [IGNORE] * (width - len(r[1])) for r in rows])
    if "mm_token_type_ids" in enc:
        batch["mm_token_type_ids"] = torch.tensor([r[2] + [0] * (width - len(r[2])) for r in rows])
    return batch


def target_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over target tokens, computing logits only where the next token is learned:
    prompts are most of every sequence, and the vocabulary projection of their positions is wasted work."""
    inputs = dict(batch)
    labels = inputs.pop("labels")
    learned = labels[:, 1:] != IGNORE  # position p predicts token p + 1
    keep = torch.cat([learned, torch.zeros_like(learned[:, :1])], dim=1)
    logits = model(**inputs, logits_to_keep=keep).logits  # (number of learned tokens, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][learned])


def length_grouped_batches(samples: list[Sample], batch_size: int, rng: random.Random) -> list[list[Sample]]:
    """Shuffle, then sort within windows of 16 batches by length and shuffle the batches: similar lengths
    share a batch (little padding) while the order stays random."""
    order = samples[:]
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda s: len(str(s.messages)) + len(s.target))
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train(model, processor, samples: list[Sample], cfg: TrainConfig, train_modules: list[str],
          desc: str = "train") -> dict[str, float]:
    """Train the trainable parameters of `model` (a peft model) in place; returns summary figures."""
    if not samples:
        raise ValueError("no training examples")
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    full = set(full_module_names(model, train_modules))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n not in full], "lr": cfg.lr},
              {"params": [p for n, p in params if n in full], "lr": cfg.full_lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    epochs = math.ceil(cfg.epochs)
    batches = [b for e in range(epochs) for b in length_grouped_batches(samples, cfg.batch_size, rng)]
    batches = batches[:max(1, round(len(batches) * cfg.epochs / epochs))]  # fractional epochs
    batches = batches[accelerator.process_index::accelerator.num_processes]
    steps = math.ceil(len(batches) / cfg.grad_accum)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * steps), steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    losses, tokens, start = [], 0, time.time()
    bar = tqdm(batches, desc=desc, leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        inputs = {k: v.to(accelerator.device) for k, v in collate(processor, batch, cfg.max_length).items()}
        with accelerator.accumulate(model), autocast(model):
            loss = target_loss(model, inputs)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_([p for _, p in params], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        losses.append(loss.item())
        tokens += int((inputs["labels"] != IGNORE).sum())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    seconds = time.time() - start
    log.info("%s: %d examples, %d batches, final loss %.3f, %.0f s", desc, len(samples), len(batches),
             sum(losses[-20:]) / max(1, len(losses[-20:])), seconds)
    return {"train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "train_steps": float(len(batches)),
            "train_target_tokens": float(tokens), "train_seconds": seconds}
