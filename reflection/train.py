"""Supervised training of a LoRA (and any fully trained modules) on examples; loss on target tokens only.

Runs under `accelerate` (one CPU process, one GPU, or `accelerate launch` on several GPUs).

- **Loss weighting: per example.** Each example's loss is the mean cross-entropy over its own target tokens
  (its end-of-turn token included), and a batch's loss is the mean over its examples. A long target (a
  refine example's whole corrected solution) and a short one (a select example's one final line) weigh the
  same, whatever the batch they share: a token mean would let the long objectives outweigh the short ones.
- **`train.max_length`: the prompt is cut, never the target or the images.** An example longer than the
  limit loses prompt tokens from the middle of its text: between the last image token (and the special
  tokens that close the image) and the prompt's last `KEEP_TAIL` tokens (the instruction and the assistant
  header), where long DOM listings and tables live. An example that still cannot fit (image tokens + kept
  tail + target > max_length) is skipped. Both are counted (`truncated_examples`, `skipped_examples`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from agent.models import autocast, end_of_turn_token_id, full_module_names
from agent.policy import prompt_images
from reflection.examples import KINDS, Sample

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that carry no loss
KEEP_TAIL = 64  # prompt tokens kept whole at the end of a cut prompt: its instruction and the assistant header


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


@dataclass
class Collated:
    """A collated batch and what `max_length` did to its examples."""

    batch: dict[str, torch.Tensor] | None  # None when every example was skipped
    kept: list[int]  # the index in `samples` of each row of `batch`
    truncated: list[int]  # indices (in `samples`) of the kept examples whose prompt was cut
    skipped: list[int]  # indices of the examples that cannot fit even with their prompt cut


def _protected_head(processor, ids: list[int], mm: list[int] | None) -> int:
    """Prompt tokens that are never cut: everything up to and including the last image token, and the special
    tokens right after it (e.g. <|vision_end|>); without an image, the leading special tokens."""
    image_ids = {getattr(processor, name, None) for name in ("image_token_id", "video_token_id", "fake_image_token_id")}
    image = [(mm is not None and mm[j] != 0) or t in image_ids for j, t in enumerate(ids)]
    head = max((j + 1 for j, is_image in enumerate(image) if is_image), default=0)
    special = set(processor.tokenizer.all_special_ids)
    while head < len(ids) and ids[head] in special:
        head += 1
    return head


def _cut(processor, ids: list[int], mm: list[int] | None, excess: int, keep_tail: int) -> tuple[int, int] | None:
    """The span [start, end) of `excess` prompt tokens to remove (the middle of the text between the protected
    head and the last `keep_tail` tokens), or None when that text is too short."""
    head = _protected_head(processor, ids, mm)
    tail = max(head, len(ids) - keep_tail)
    if tail - head < excess:
        return None
    start = head + (tail - head - excess) // 2
    return start, start + excess


def collate(processor, samples: list[Sample], max_length: int, keep_tail: int = KEEP_TAIL) -> Collated:
    """Tokenise prompt and target separately and concatenate, so the label mask is exact: every prompt
    token (images included) is IGNORE, every target token (and the end-of-turn token) is learned.

    An example longer than `max_length` is shortened in its prompt's text (see the module docstring); one
    that cannot fit is left out of the batch (`Collated.skipped`), its images too."""
    tokenizer = processor.tokenizer
    eos = end_of_turn_token_id(processor)  # the target ends its turn as the checkpoint's chat template does
    tokenizer.padding_side = "right"
    prompts = [processor.apply_chat_template(s.messages, add_generation_prompt=True) for s in samples]
    images = [prompt_images(s.messages) for s in samples]
    enc = processor(text=prompts, images=images if any(images) else None, padding=True, return_tensors="pt")
    targets = [tokenizer(s.target, add_special_tokens=False)["input_ids"] + [eos] for s in samples]
    lengths = enc["attention_mask"].sum(1).tolist()
    rows, truncated, skipped = [], [], []
    for i, (plen, target) in enumerate(zip(lengths, targets)):
        prompt = enc["input_ids"][i, :plen].tolist()
        mm = enc["mm_token_type_ids"][i, :plen].tolist() if "mm_token_type_ids" in enc else None
        excess = plen + len(target) - max_length
        if excess > 0:
            span = _cut(processor, prompt, mm, excess, keep_tail)
            if span is None:
                skipped.append(i)
                continue
            start, end = span
            prompt = prompt[:start] + prompt[end:]
            mm = mm[:start] + mm[end:] if mm is not None else None
            truncated.append(i)
        ids = prompt + target
        labels = [IGNORE] * len(prompt) + target
        rows.append((ids, labels, mm + [0] * len(target) if mm is not None else None))
    if skipped:  # encode again without them: their images must not reach the model
        kept = [i for i in range(len(samples)) if i not in skipped]
        if not kept:
            return Collated(None, [], [], skipped)
        sub = collate(processor, [samples[i] for i in kept], max_length, keep_tail)
        return Collated(sub.batch, kept, [kept[j] for j in sub.truncated], skipped)
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    batch = dict(enc)
    batch["input_ids"] = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows])
    batch["attention_mask"] = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
    batch["labels"] = torch.tensor([r[1] + [IGNORE] * (width - len(r[1])) for r in rows])
    if "mm_token_type_ids" in enc:
        batch["mm_token_type_ids"] = torch.tensor([r[2] + [0] * (width - len(r[2])) for r in rows])
    return Collated(batch, list(range(len(samples))), truncated, [])


def example_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's mean cross-entropy over its own target tokens, shape (rows,), computing logits only where the
    next token is learned: prompts are most of every sequence, and the vocabulary projection of their positions
    is wasted work. The kept positions come back flattened in row-major order; each token's loss goes back to
    its row."""
    inputs = dict(batch)
    labels = inputs.pop("labels")
    learned = labels[:, 1:] != IGNORE  # position p predicts token p + 1
    keep = torch.cat([learned, torch.zeros_like(learned[:, :1])], dim=1)
    logits = model(**inputs, logits_to_keep=keep).logits  # (number of learned tokens, vocab)
    per_token = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][learned], reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(learned)[learned]
    sums = torch.zeros(labels.shape[0], device=per_token.device, dtype=per_token.dtype).index_add(0, rows, per_token)
    counts = learned.sum(1)
    if not bool((counts > 0).all()):
        raise ValueError("an example has no target token to learn")
    return sums / counts.to(sums.dtype)


def target_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss, weighted per example: each example's loss is the mean cross-entropy over its own
    target tokens, and the batch loss is the mean over its examples. So every example counts the same,
    whether its target is a whole solution (refine, sft) or one final line (select), and whatever the lengths
    of the examples it shares a batch with."""
    return example_losses(model, batch).mean()


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
    """Train the trainable parameters of `model` (a peft model) in place; returns summary figures:
    - `train_loss`: the mean per-example loss over the examples of the last 20 steps;
    - `loss_<kind>` for each kind trained (KINDS): the mean per-example loss of that kind over the last
      epoch's worth of its examples (the last n losses of that kind, n = its examples on this process);
    - `truncated_examples` / `skipped_examples`: examples whose prompt was cut to fit `max_length` / that could
      not fit and were never trained (each counted once, however many epochs);
    - `train_steps` (batches trained), `train_target_tokens`, `train_seconds`;
    - `world_size` (data-parallel processes) and `final_lr` (the LoRA learning rate after the last step: the
      schedule's end value, 0 for the cosine).
    Under several processes the figures are the main process's (its share of the batches).
    Every loss is the one the step trained on (train mode, before that step's update)."""
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
    # Data-parallel processes must take the same number of steps (one with fewer would wait forever for the
    # others' gradients): the last few batches are repeated to a multiple of the world size.
    batches += batches[:(-len(batches)) % accelerator.num_processes]
    batches = batches[accelerator.process_index::accelerator.num_processes]
    steps = math.ceil(len(batches) / cfg.grad_accum)  # optimizer steps, the same on every process
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * steps), steps)
    # The schedule is stepped here, once per optimizer step: accelerate's wrapper would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    per_kind = Counter(s.kind for s in samples)
    recent = {kind: deque(maxlen=math.ceil(per_kind[kind] / accelerator.num_processes))  # KINDS' order first
              for kind in sorted(per_kind, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))}
    last_steps: deque[list[float]] = deque(maxlen=20)  # the per-example losses of the last 20 steps
    truncated, skipped = set(), set()  # id() of the examples
    trained, tokens, start = 0, 0, time.time()
    bar = tqdm(batches, desc=desc, leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        collated = collate(processor, batch, cfg.max_length)
        truncated.update(id(batch[i]) for i in collated.truncated)
        skipped.update(id(batch[i]) for i in collated.skipped)
        if collated.batch is None:  # every example of the batch is too long
            continue
        inputs = {k: v.to(accelerator.device) for k, v in collated.batch.items()}
        with accelerator.accumulate(model), autocast(model):
            losses = example_losses(model, inputs)
            loss = losses.mean()  # per-example weighting (module docstring)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_([p for _, p in params], 1.0)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad()
        values = losses.detach().float().tolist()
        for i, value in zip(collated.kept, values):
            recent[batch[i].kind].append(value)
        last_steps.append(values)
        trained += 1
        tokens += int((inputs["labels"] != IGNORE).sum())
        bar.set_postfix(loss=f"{_mean([v for step in last_steps for v in step]):.3f}")
    model.eval()
    seconds = time.time() - start
    if not trained:
        raise ValueError(f"{desc}: every training example ({len(skipped)}) is longer than train.max_length="
                         f"{cfg.max_length} tokens even with their prompt's text cut (their image tokens + the "
                         f"prompt's last {KEEP_TAIL} tokens + the target do not fit): raise train.max_length")
    if truncated or skipped:
        log.warning("%s: train.max_length=%d: %d examples had their prompt's text cut to fit, %d could not fit and "
                    "were skipped", desc, cfg.max_length, len(truncated), len(skipped))
    kind_losses = {f"loss_{kind}": _mean(list(values)) for kind, values in recent.items() if values}
    train_loss = _mean([v for step in last_steps for v in step])
    log.info("%s: %d examples, %d batches, final loss %.3f (%s), %.0f s", desc, len(samples), trained, train_loss,
             " ".join(f"{k}={v:.3f}" for k, v in kind_losses.items()), seconds)
    return {"train_loss": train_loss, "train_steps": float(trained), "train_target_tokens": float(tokens),
            "train_seconds": seconds, "truncated_examples": float(len(truncated)),
            "skipped_examples": float(len(skipped)), "world_size": float(accelerator.num_processes),
            "final_lr": float(scheduler.get_last_lr()[0]), **kind_losses}


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))
