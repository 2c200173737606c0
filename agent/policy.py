"""Batched generation behind one small interface: `Policy.generate(prompts, n, greedy) -> texts`.

Anything that turns chat prompts into completions (a vLLM sampler, an API) can stand in for `Policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import AttentionInterface, DynamicCache, LogitsProcessor, LogitsProcessorList, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from agent.models import autocast
from agent.prompts import Messages


@dataclass
class Sampling:
    temperature: float = 0.9
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 384


class TopKTopPSampler(LogitsProcessor):
    """Temperature -> top-k -> top-p sampling done inside the logits processor, returning a one-hot score
    row that greedy decoding then picks. Same distribution as Hugging Face's warpers, but it sorts and
    samples over k candidates instead of the whole vocabulary: `multinomial` over a 49k vocabulary alone
    cost 63 ms per step at batch 64 on a 2-core CPU."""

    def __init__(self, sampling: Sampling, generator: torch.Generator):
        self.s, self.generator = sampling, generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.s.top_k, scores.shape[-1]) if self.s.top_k > 0 else scores.shape[-1]
        values, indices = (scores.float() / max(self.s.temperature, 1e-5)).topk(k, dim=-1)
        probs = values.softmax(-1)
        # Drop a candidate once the mass of those ranked above it already reaches top_p (keeps >= 1).
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.s.top_p, 0.0)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, indices.gather(1, choice), 0.0)


@lru_cache(maxsize=4096)
def _load_image(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def prompt_images(messages: Messages) -> list[Image.Image]:
    return [_load_image(part["path"]) for m in messages if not isinstance(m["content"], str)
            for part in m["content"] if part["type"] == "image"]


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """generate() gives the output head a slice of the prefill's hidden states (the last position). On a CPU,
    linear() on that non-contiguous 3-D view copies the whole weight once per sequence ([batch, hidden, vocab]:
    0.9 GB and seconds per prefill at batch 16 with a 49k vocabulary); a contiguous copy of the slice is free."""
    return (args[0].contiguous(), *args[1:])


def sdpa_matmul_decode(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs) -> tuple[torch.Tensor, None]:
    """Attention as `sdpa`, except a decode step (one query token), which is a plain matmul-softmax-matmul over
    the key/value heads. On a CPU torch's flash kernel takes 1.2 ms for such a step where this takes 0.5 ms
    (bf16, 48 sequences, 300 keys, SmolLM2's 9 query / 3 key-value heads): a third of a sampled step's time."""
    if query.shape[2] != 1 or module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    query = query.reshape(batch, key.shape[1], heads // key.shape[1], dim)  # query heads grouped by their kv head
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # sdpa's mask: [batch, 1, 1, keys], True = attend (or additive floats)
        mask = attention_mask[..., :key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)
    return out.reshape(batch, 1, heads, dim), None


SDPA_MATMUL_DECODE = "sdpa_matmul_decode"
AttentionInterface.register(SDPA_MATMUL_DECODE, sdpa_matmul_decode)
AttentionMaskInterface.register(SDPA_MATMUL_DECODE, sdpa_mask)


class Policy:
    """A model + processor that completes chat prompts in batches."""

    def __init__(self, model, processor, batch_size: int = 32, sampling: Sampling | None = None, seed: int = 0,
                 progress: bool = True, prefill_call_tokens: int = 128, decode_attention: str = "auto"):
        """decode_attention: "matmul" runs one-token decode steps with `sdpa_matmul_decode` (a model on sdpa),
        "sdpa" leaves the model's attention alone, "auto" is matmul on a CPU. prefill_call_tokens: see
        `prefill_buckets`."""
        self.model, self.processor = model, processor
        self.prefill_call_tokens = prefill_call_tokens
        on_cpu = next(model.parameters()).device.type == "cpu"
        if decode_attention not in ("auto", "matmul", "sdpa"):
            raise ValueError(f"decode_attention must be auto, matmul or sdpa, not {decode_attention!r}")
        if model.config._attn_implementation in ("sdpa", SDPA_MATMUL_DECODE):
            matmul = decode_attention == "matmul" or (decode_attention == "auto" and on_cpu)
            model.set_attn_implementation(SDPA_MATMUL_DECODE if matmul else "sdpa")
        head = model.get_output_embeddings()
        if head is not None and not getattr(head, "contiguous_input", False):
            head.register_forward_pre_hook(_contiguous_input)
            head.contiguous_input = True
        self.batch_size = batch_size
        self.sampling = sampling or Sampling()
        self.generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
        self.progress = progress
        self.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos_token_id is None or self.eos_token_id == processor.tokenizer.unk_token_id:
            self.eos_token_id = processor.tokenizer.eos_token_id

    def generate(self, prompts: list[Messages], n: int | list[int] = 1, greedy: bool = False,
                 max_new_tokens: int | None = None, desc: str = "generate", progress: bool = True) -> list[list[str]]:
        """Complete each prompt n times (n may differ per prompt); returns texts grouped by prompt.

        Prompts are sorted by length before batching, so a batch wastes little on padding. A batch holds up
        to `batch_size` sequences; the n completions of a prompt share one prefill of it (see `_generate_batch`).
        """
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        texts = [self.processor.apply_chat_template(p, add_generation_prompt=True) for p in prompts]
        order = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: len(texts[i]))
        batches: list[list[tuple[int, int]]] = [[]]  # [(prompt index, completions)] per batch
        for i in order:
            left = counts[i]
            while left:
                room = self.batch_size - sum(c for _, c in batches[-1])
                if room == 0:
                    batches.append([])
                    continue
                batches[-1].append((i, min(room, left)))
                left -= min(room, left)
        out: list[list[str]] = [[] for _ in prompts]
        for batch in tqdm([b for b in batches if b], desc=desc, disable=not (self.progress and progress), leave=False):
            completions = self._generate_batch(
                [texts[i] for i, _ in batch], [prompt_images(prompts[i]) for i, _ in batch], [c for _, c in batch],
                greedy, max_new_tokens or self.sampling.max_new_tokens)
            for (i, _), texts_i in zip(batch, completions):
                out[i] += texts_i
        return out

    @torch.inference_mode()
    def _generate_batch(self, texts: list[str], images: list[list[Image.Image]], counts: list[int], greedy: bool,
                        max_new_tokens: int) -> list[list[str]]:
        """counts[i] completions of prompt i, in two phases.

        Prefill: prompts of similar length are read together (`prefill_buckets`), so little of the prefill is
        padding, and each prompt is read once however many completions it gets. Decode: the buckets' keys and
        values are left-padded into one preallocated cache, copied once per completion, and every completion
        continues from there in one batch. Each copy picks its own first token from its prompt's logits."""
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        device = next(self.model.parameters()).device

        def process(rows: list[int]) -> dict[str, torch.Tensor]:
            inputs = self.processor(text=[texts[i] for i in rows],
                                    images=[images[i] for i in rows] if any(images) else None,
                                    return_tensors="pt", padding=True)
            return {k: v.to(device) for k, v in inputs.items()}

        everything = process(list(range(len(texts))))
        width = everything["input_ids"].shape[1]
        buckets = prefill_buckets(everything["attention_mask"].sum(1).tolist(), self.prefill_call_tokens)
        sampler = None if greedy else TopKTopPSampler(self.sampling, self.generator)
        common = dict(do_sample=False, eos_token_id=self.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      temperature=None, top_p=None, top_k=None)
        prefills: list[_Prefill] = []
        with autocast(self.model):
            for rows in buckets:
                inputs = everything if len(buckets) == 1 else process(rows)
                out = self.model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True,
                                          output_logits=True, **common)
                pad = width - inputs["input_ids"].shape[1]
                prefills.append(_Prefill(
                    F.pad(inputs["input_ids"], (pad, 0), value=tokenizer.pad_token_id),
                    F.pad(inputs["attention_mask"], (pad, 0), value=0), out.past_key_values, out.logits[0],
                    # Qwen2-VL keeps multimodal rope offsets per sequence on the model; the next bucket replaces them
                    {m: m.rope_deltas for m in self.model.modules() if getattr(m, "rope_deltas", None) is not None}))
            merged_row = {i: r for r, i in enumerate(i for rows in buckets for i in rows)}
            index = torch.tensor([merged_row[i] for i, c in enumerate(counts) for _ in range(c)], device=device)
            ids = torch.cat([p.ids for p in prefills])[index]
            mask = torch.cat([p.mask for p in prefills])[index]
            logits = torch.cat([p.logits for p in prefills])[index].float()
            first = (sampler(None, logits) if sampler else logits).argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, first], 1), torch.cat([mask, torch.ones_like(first)], 1)
            if max_new_tokens > 1:
                for module in prefills[0].rope_deltas:
                    module.rope_deltas = torch.cat([p.rope_deltas[module] for p in prefills])[index]
                cache = StaticCache(config=self.model.config, max_cache_len=width + max_new_tokens)
                for layer in range(len(prefills[0].cache.layers)):
                    keys, values = [], []
                    for p in prefills:
                        bucket = p.cache.layers[layer]
                        pad = (0, 0, width - bucket.keys.shape[2], 0)
                        keys.append(F.pad(bucket.keys, pad))
                        values.append(F.pad(bucket.values, pad))
                        bucket.keys = bucket.values = None  # free the bucket's copy
                    cache.update(torch.cat(keys)[index], torch.cat(values)[index], layer)
                ids = self.model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                          max_new_tokens=max_new_tokens - 1,
                                          logits_processor=LogitsProcessorList([sampler] if sampler else []), **common)
        new_tokens = ids[:, width:].tolist()
        texts_out = [tokenizer.decode(t[:t.index(self.eos_token_id)] if self.eos_token_id in t else t,
                                      skip_special_tokens=True).strip() for t in new_tokens]
        grouped, start = [], 0
        for c in counts:
            grouped.append(texts_out[start:start + c])
            start += c
        return grouped


@dataclass
class _Prefill:
    """One length bucket after its prefill: inputs left-padded to the batch's width, their cache and logits."""
    ids: torch.Tensor
    mask: torch.Tensor
    cache: DynamicCache
    logits: torch.Tensor  # next-token logits, [prompts, vocab]
    rope_deltas: dict[torch.nn.Module, torch.Tensor]


def prefill_buckets(lengths: list[int], call_tokens: int) -> list[list[int]]:
    """Split prompts (their token lengths) into groups prefilled one call each, padded to their longest member.

    Exact minimum of (padded tokens + `call_tokens` per call) over groups of consecutive lengths. The cost of a
    call beyond its tokens is `call_tokens`: 0 gives one call per distinct length, a large value one call."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    best, cut = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(end):
            cost = best[begin] + (end - begin) * sorted_lengths[end - 1] + call_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    buckets, end = [], len(order)
    while end:
        buckets.append(order[cut[end]:end])
        end = cut[end]
    return buckets[::-1]
