"""Supervised training of a LoRA (and any fully trained modules) on examples; loss on target tokens only.

Runs under `accelerate`: one CPU process, one GPU, or `accelerate launch` on several (DDP, FSDP or DeepSpeed
ZeRO from a config file in conf/accelerate/; see `train`).

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

import contextlib
import functools
import logging
import math
import random
import shutil
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from agent.models import FULL_MODULES_FILE, autocast, end_of_turn_token_id, full_module_names, save_adapter
from agent.policy import prompt_images
from reflection.distributed import sharded
from reflection.examples import KINDS, Sample
from reflection.meter import peak_rss_mb

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


def fsdp_layer_classes(model: torch.nn.Module) -> list[type]:
    """The module classes FSDP makes its units (shards and gathers one at a time): the language model's decoder
    layer, found from `get_decoder()` (so it is a unit whatever the checkpoint's class lists), plus each class of
    the model's `_no_split_modules` that it instantiates (e.g. the vision tower's blocks; a name it lists but
    does not instantiate would make accelerate's prepare fail)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    classes = {type(base.get_decoder().layers[0])}
    named = set(getattr(base, "_no_split_modules", None) or [])
    classes |= {type(m) for m in base.modules() if type(m).__name__ in named}
    return sorted(classes, key=lambda c: c.__name__)


def fsdp_wrap_policy(model: torch.nn.Module) -> Callable[..., bool]:
    """FSDP1's auto-wrap policy for a LoRA model: each layer of `fsdp_layer_classes` is a unit, and so is each
    trainable leaf module (a LoRA A or B). FSDP1 flattens a unit's parameters into one tensor with one
    `requires_grad`, so frozen weights and trained LoRA weights must not share a unit (peft's own
    `fsdp_auto_wrap_policy` does the same). FSDP2 shards each parameter on its own and needs only the classes."""
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    def trainable_leaf(module: torch.nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return not list(module.children()) and isinstance(weight, torch.Tensor) and weight.requires_grad

    return functools.partial(_or_policy, policies=[
        functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf),
        functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=set(fsdp_layer_classes(model)))])


def configure_backend(accelerator: Accelerator, model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Settings `accelerator.prepare` needs from this model and config under an accelerate config file
    (conf/accelerate/): FSDP's wrap policy, DeepSpeed's micro-batch size and accumulation steps (there is no
    dataloader to read them from: without them `prepare` fails). Plain DDP needs nothing."""
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    state = accelerator.state
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        if plugin.fsdp_version == 2:
            plugin.auto_wrap_policy = transformer_auto_wrap_policy
            plugin.transformer_cls_names_to_wrap = [c.__name__ for c in fsdp_layer_classes(model)]
        else:
            plugin.auto_wrap_policy = fsdp_wrap_policy(model)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum  # its engine scales the loss by this and steps on it


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB.
    - On a GPU: `torch.cuda.max_memory_allocated` since the last reset of torch's peak statistics (`train` resets
      them when it starts): the most memory live tensors held on this device (weights, gradients, optimizer
      states, activations); not the CUDA context, nor blocks the caching allocator holds free.
    - On a CPU: the process's peak resident set size (VmHWM in /proc/self/status) since the kernel's mark was last
      reset (the loop's stage meter resets it when a stage begins, else since the process started): every
      resident byte of the process, the weights loaded before training and Python itself included. `train`
      does not reset it, which would hide the stage's earlier peak from that meter."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def fitting(processor, samples: list[Sample], cfg: TrainConfig) -> tuple[list[Sample], int, int]:
    """The examples that fit `max_length` (their prompt cut where needed), and how many were cut and how many
    cannot fit. Decided once per example before batching, sharded across processes: a batch all of whose
    examples cannot fit would be skipped on one process while the others wait for its gradients."""
    def check(share: list[Sample]) -> list[tuple[bool, bool]]:  # (fits, cut) per example
        out = []
        for i in range(0, len(share), cfg.batch_size):
            chunk = collate(processor, share[i:i + cfg.batch_size], cfg.max_length)
            out += [(j not in chunk.skipped, j in chunk.truncated) for j in range(len(share[i:i + cfg.batch_size]))]
        return out

    flags = sharded(samples, check)
    kept = [s for s, (fits, _) in zip(samples, flags) if fits]
    return kept, sum(cut for _, cut in flags), sum(not fits for fits, _ in flags)


def step_groups(samples: list[Sample], cfg: TrainConfig, rng: random.Random, rank: int,
                world: int) -> list[list[list[Sample]]]:
    """This process's optimizer steps, each a list of up to `grad_accum` micro-batches. The batches of all epochs
    (a fractional last epoch cut short) are dealt round-robin after the last few are repeated up to a multiple
    of the world size: every process gets the same number of batches, hence of optimizer steps (one with fewer
    would wait forever for the others' gradients)."""
    epochs = math.ceil(cfg.epochs)
    batches = [b for _ in range(epochs) for b in length_grouped_batches(samples, cfg.batch_size, rng)]
    batches = batches[:max(1, round(len(batches) * cfg.epochs / epochs))]  # fractional epochs
    batches += [batches[i % len(batches)] for i in range((-len(batches)) % world)]
    mine = batches[rank::world]
    return [mine[i:i + cfg.grad_accum] for i in range(0, len(mine), cfg.grad_accum)]


def save_trained(accelerator: Accelerator, model: torch.nn.Module, save_to: Path, train_modules: list[str]) -> None:
    """Write the LoRA adapter (and the modules trained in full) into `save_to`, from the main process only;
    replaces whatever `save_to` held. Under FSDP each process holds a shard of the weights: the state is gathered
    on every process first (a collective) and written from that state (`save_state`). Elsewhere every process
    holds the whole trained model, and `agent.models.save_adapter` writes it."""
    from accelerate.utils import DistributedType

    sharded_weights = accelerator.distributed_type == DistributedType.FSDP
    state = accelerator.get_state_dict(model) if sharded_weights else None
    if accelerator.is_main_process:
        shutil.rmtree(save_to, ignore_errors=True)
        peft_model = accelerator.unwrap_model(model)
        if sharded_weights:
            save_state(peft_model, state, save_to, train_modules)
        else:
            save_adapter(peft_model, save_to, train_modules)
    accelerator.wait_for_everyone()


def save_state(peft_model, state: dict[str, torch.Tensor], save_to: Path, train_modules: list[str]) -> None:
    """`save_adapter`'s files, taken from a gathered state dict (keys as `peft_model.state_dict()`'s) rather than
    from the model's own, sharded, parameters."""
    peft_model.save_pretrained(str(save_to), state_dict=state)
    base = peft_model.get_base_model()
    key = {id(p): n for n, p in peft_model.named_parameters()}  # base-model name -> key in `state`
    params = dict(base.named_parameters())
    names = full_module_names(base, train_modules)
    if names:
        save_file({n: state[key[id(params[n])]].detach().float().cpu().contiguous() for n in names},
                  str(save_to / FULL_MODULES_FILE))


def train(model, processor, samples: list[Sample], cfg: TrainConfig, train_modules: list[str],
          desc: str = "train", save_to: Path | None = None) -> dict[str, float]:
    """Train the trainable parameters of `model` (a peft model) in place, under DDP, FSDP or DeepSpeed when
    `accelerate launch` set one up; with `save_to`, the main process then writes the adapter there
    (`save_trained`). Returns summary figures:
    - `train_loss`: the mean per-example loss over the examples of the last 20 micro-batches;
    - `loss_<kind>` for each kind trained (KINDS): the mean per-example loss of that kind over the last
      epoch's worth of its examples (the last n losses of that kind, n = its examples on this process);
    - `truncated_examples` / `skipped_examples`: examples whose prompt was cut to fit `max_length` / that could
      not fit and were never trained (each counted once, however many epochs; over all processes);
    - `train_steps` (micro-batches trained on this process), `optimizer_steps` (the same on every process:
      micro-batches / `grad_accum`, rounded up), `train_target_tokens`, `train_seconds`;
    - `world_size` (data-parallel processes) and `final_lr` (the LoRA learning rate after the last optimizer
      step: the schedule's end value, 0 for the cosine);
    - `peak_memory_mb`: `peak_memory_mb` at the end of training, the largest over the processes.
    Under several processes the other figures are the main process's (its share of the batches).

    **Gradient accumulation.** An optimizer step takes `grad_accum` micro-batches of `batch_size` (the last step
    of a stage may take fewer). Each micro-batch's loss is the sum of its per-example losses over the number of
    examples in the whole step, so the step's gradient is exactly that of one batch of all its examples, each
    weighted the same. Gradients are synchronised across processes on the step's last micro-batch only (no_sync
    before it). The LR schedule counts optimizer steps, and is stepped once per step here (accelerate's wrapper
    would step it once per process).
    Every loss is the one the micro-batch trained on (train mode, before that step's update)."""
    if not samples:
        raise ValueError("no training examples")
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:  # ACCELERATE_GRADIENT_ACCUMULATION_STEPS
        raise ValueError(f"the accelerate config sets gradient_accumulation_steps="
                         f"{accelerator.gradient_accumulation_steps} but train.grad_accum={cfg.grad_accum}: set it "
                         f"with train.grad_accum only (remove it from the accelerate config file)")
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    kept, truncated, skipped = fitting(processor, samples, cfg)
    if not kept:
        raise ValueError(f"{desc}: every training example ({skipped}) is longer than train.max_length="
                         f"{cfg.max_length} tokens even with their prompt's text cut (their image tokens + the "
                         f"prompt's last {KEEP_TAIL} tokens + the target do not fit): raise train.max_length")
    if truncated or skipped:
        log.warning("%s: train.max_length=%d: %d examples had their prompt's text cut to fit, %d could not fit and "
                    "were skipped", desc, cfg.max_length, truncated, skipped)
    groups = step_groups(kept, cfg, rng, accelerator.process_index, accelerator.num_processes)
    full = set(full_module_names(model, train_modules))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([g for g in ({"params": [p for n, p in params if n not in full], "lr": cfg.lr},
                                               {"params": [p for n, p in params if n in full], "lr": cfg.full_lr})
                                   if g["params"]], weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * len(groups)), len(groups))
    configure_backend(accelerator, model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    per_kind = Counter(s.kind for s in kept)
    recent = {kind: deque(maxlen=math.ceil(per_kind[kind] / accelerator.num_processes))  # KINDS' order first
              for kind in sorted(per_kind, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))}
    last_batches: deque[list[float]] = deque(maxlen=20)  # the per-example losses of the last 20 micro-batches
    trained, tokens, start = 0, 0, time.time()
    bar = tqdm(total=sum(map(len, groups)), desc=desc, leave=False, disable=not accelerator.is_local_main_process)
    for group in groups:
        examples = sum(map(len, group))
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            accelerator.sync_gradients = last  # DeepSpeed reads it as its accumulation boundary
            inputs = {k: v.to(accelerator.device) for k, v in collate(processor, batch, cfg.max_length).batch.items()}
            with contextlib.nullcontext() if last else accelerator.no_sync(model), autocast(model):
                losses = example_losses(model, inputs)
                # accelerator.backward (or DeepSpeed's engine) divides by grad_accum: the step's gradient is
                # the mean over its examples (see the docstring)
                accelerator.backward(losses.sum() * cfg.grad_accum / examples)
            values = losses.detach().float().tolist()
            for example, value in zip(batch, values):
                recent[example.kind].append(value)
            last_batches.append(values)
            trained += 1
            tokens += int((inputs["labels"] != IGNORE).sum())
            bar.update()
            bar.set_postfix(loss=f"{_mean([v for b in last_batches for v in b]):.3f}")
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    bar.close()
    model.eval()
    seconds = time.time() - start
    peak = accelerator.gather(torch.tensor([peak_memory_mb(accelerator.device)], device=accelerator.device))
    if save_to is not None:
        save_trained(accelerator, model, Path(save_to), train_modules)
    kind_losses = {f"loss_{kind}": _mean(list(values)) for kind, values in recent.items() if values}
    train_loss = _mean([v for b in last_batches for v in b])
    log.info("%s: %d examples, %d micro-batches, %d optimizer steps, final loss %.3f (%s), %.0f s", desc,
             len(samples), trained, len(groups), train_loss, " ".join(f"{k}={v:.3f}" for k, v in kind_losses.items()),
             seconds)
    return {"train_loss": train_loss, "train_steps": float(trained), "optimizer_steps": float(len(groups)),
            "train_target_tokens": float(tokens), "train_seconds": seconds, "truncated_examples": float(truncated),
            "skipped_examples": float(skipped), "world_size": float(accelerator.num_processes),
            "final_lr": float(scheduler.get_last_lr()[0]), "peak_memory_mb": float(peak.max()), **kind_losses}


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))
