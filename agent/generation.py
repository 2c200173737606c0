"""Generation engines: one batch of chat-formatted prompts in, the new token ids of their completions out.

`Policy` (agent/policy.py) turns chat prompts into batches and decodes the tokens into texts; an engine
completes one batch: `engine.generate(texts, images, counts, greedy, max_new_tokens, eos_token_id)`.
- `FastEngine` (`generation.engine=fast`, the default): prompts prefilled in length buckets, their keys and
  values merged into one static cache, one-token decode steps on a matmul kernel (see README, "Generation
  on a CPU"). In fp32 its completions are those of plain `generate`.
- `HFEngine` (`generation.engine=hf`): plain `model.generate` on one padded batch, the reference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AttentionInterface, LogitsProcessor, LogitsProcessorList, StaticCache
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from agent.models import autocast

ENGINES = ("fast", "hf")
# transformers 5.24 renamed generate()'s `past_key_values` to `cache` (the old name warns until 6.0)
CACHE = "cache" if "cache" in {f.name for f in fields(GenerateDecoderOnlyOutput)} else "past_key_values"
PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # [batch, tokens]


@dataclass(frozen=True)
class Sampling:
    """How sampled completions are drawn: the `sample` block of the config (the paper's settings)."""

    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int  # also the budget of greedy completions


@dataclass(frozen=True)
class Generation:
    """How completions are computed: the `generation` block of the config."""

    engine: str  # one of ENGINES
    batch_size: int  # sequences per engine call
    prefill_call_tokens: int  # FastEngine: the cost of one prefill call, in tokens (see `prefill_buckets`)
    decode_attention: str  # FastEngine: "matmul", "sdpa", or "auto" (matmul on a CPU)

    @classmethod
    def from_config(cls, cfg) -> "Generation":
        return cls(**{f.name: cfg[f.name] for f in fields(cls)})


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


def attn_implementations(config) -> dict:
    """A config's attention implementation and its sub-configs' ({"": own, sub-config name: {...}}), in the
    form `set_attn_implementation` takes: a snapshot to restore. transformers has no public getter for it
    (`get_experts_implementation` exists for experts only), so this reads the `_attn_implementation` property
    that transformers' attention layers themselves read."""
    subs = {key: getattr(config, key, None) for key in getattr(config, "sub_configs", {})}
    return {"": config._attn_implementation, **{k: attn_implementations(c) for k, c in subs.items() if c is not None}}


def _switched(snapshot: dict, old: tuple[str, ...], new: str) -> dict:
    return {k: _switched(v, old, new) if isinstance(v, dict) else new if v in old else v for k, v in snapshot.items()}


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """generate() gives the output head a slice of the prefill's hidden states (the last position). On a CPU,
    linear() on that non-contiguous 3-D view copies the whole weight once per sequence ([batch, hidden, vocab]:
    0.9 GB and seconds per prefill at batch 16 with a 49k vocabulary); a contiguous copy of the slice is free."""
    return (args[0].contiguous(), *args[1:])


class Engine:
    """Completes one batch: `counts[i]` completions of `texts[i]` (chat-formatted, with `images[i]`)."""

    def __init__(self, model, processor, sampling: Sampling, seed: int):
        self.model, self.processor, self.sampling = model, processor, sampling
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def generate(self, texts: list[str], images: list[list[Image.Image]], counts: list[int], greedy: bool,
                 max_new_tokens: int, eos_token_id: int | None) -> list[list[int]]:
        """The new tokens of every completion, up to (without) the first `eos_token_id`: prompt 0's
        `counts[0]` completions first, then prompt 1's, ..."""
        raise NotImplementedError

    def process(self, texts: list[str], images: list[list[Image.Image]] | None) -> dict[str, torch.Tensor]:
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
        return {k: v.to(self.device) for k, v in inputs.items()}

    def options(self, eos_token_id: int | None) -> dict:
        return dict(eos_token_id=eos_token_id, pad_token_id=self.processor.tokenizer.pad_token_id)

    @staticmethod
    def new_tokens(ids: torch.Tensor, width: int, eos_token_id: int | None) -> list[list[int]]:
        return [t[:t.index(eos_token_id)] if eos_token_id in t else t for t in ids[:, width:].tolist()]


class HFEngine(Engine):
    """Plain `model.generate` on one padded batch: the reference. Greedy completions of a prompt are one row
    copied; sampled ones are rows of their own, with Hugging Face's warpers seeded from this engine's seed."""

    @torch.inference_mode()
    def generate(self, texts, images, counts, greedy, max_new_tokens, eos_token_id):
        rows = [i for i, c in enumerate(counts) for _ in range(min(c, 1) if greedy else c)]
        inputs = self.process([texts[i] for i in rows], [images[i] for i in rows] if any(images) else None)
        s = self.sampling
        sampling = (dict(do_sample=False, temperature=None, top_p=None, top_k=None) if greedy else
                    dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k))
        seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), autocast(self.model):
            torch.manual_seed(seed)
            ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling,
                                      **self.options(eos_token_id))
        tokens = self.new_tokens(ids, inputs["input_ids"].shape[1], eos_token_id)
        return [t for t, c in zip(tokens, [c for c in counts if c]) for _ in range(c)] if greedy else tokens


@dataclass
class _Prefill:
    """One length bucket after its prefill: inputs left-padded to the batch's width, and their cache."""
    ids: torch.Tensor
    mask: torch.Tensor
    cache: object  # a transformers Cache of the prompts less their last token
    rope_deltas: dict[torch.nn.Module, torch.Tensor]


class FastEngine(Engine):
    """Bucketed prefill, merged static cache, matmul decode. For each batch:
    1. Prefill: prompts of similar length are read together (`prefill_buckets`, `prefill_call_tokens`), so
       little of the prefill is padding, and each prompt is read once however many completions it gets. A
       prefill reads a prompt less its last token.
    2. Merge: the buckets' keys and values are left-padded into one preallocated cache, one copy per completion.
    3. Decode: one `generate` call continues every completion, from the prompts' last token on. So the first
       new token goes through the same logits processors (the model's generation_config: repetition penalty,
       bad words, ...) and the same sampler as every later one, and each copy samples its own.
    While it runs, the model decodes with `sdpa_matmul_decode` (`decode_attention`: "matmul", "sdpa", or
    "auto" = matmul on a CPU; only for a model on sdpa) and its output head reads contiguous inputs; both are
    undone when the call returns."""

    def __init__(self, model, processor, sampling: Sampling, seed: int, prefill_call_tokens: int,
                 decode_attention: str):
        super().__init__(model, processor, sampling, seed)
        if decode_attention not in ("auto", "matmul", "sdpa"):
            raise ValueError(f"decode_attention must be auto, matmul or sdpa, not {decode_attention!r}")
        self.prefill_call_tokens = prefill_call_tokens
        matmul = decode_attention == "matmul" or (decode_attention == "auto" and self.device.type == "cpu")
        self.attention = SDPA_MATMUL_DECODE if matmul else "sdpa"

    @contextlib.contextmanager
    def patched(self):
        """The model's attention switched to `self.attention` and a contiguous-input hook on its output head,
        for the length of the block only."""
        with contextlib.ExitStack() as stack:
            before = attn_implementations(self.model.config)
            during = _switched(before, ("sdpa", SDPA_MATMUL_DECODE), self.attention)
            if during != before:
                self.model.set_attn_implementation(during)
                stack.callback(self.model.set_attn_implementation, before)
            head = self.model.get_output_embeddings()
            if head is not None:  # first, so that any other hook sees what the head computes on
                stack.callback(head.register_forward_pre_hook(_contiguous_input, prepend=True).remove)
            yield

    @torch.inference_mode()
    def generate(self, texts, images, counts, greedy, max_new_tokens, eos_token_id):
        with self.patched(), autocast(self.model):
            return self._generate(texts, images, counts, greedy, max_new_tokens, eos_token_id)

    def _generate(self, texts, images, counts, greedy, max_new_tokens, eos_token_id):
        def process(rows: list[int]) -> dict[str, torch.Tensor]:
            return self.process([texts[i] for i in rows], [images[i] for i in rows] if any(images) else None)

        everything = process(list(range(len(texts))))
        width = everything["input_ids"].shape[1]
        buckets = prefill_buckets(everything["attention_mask"].sum(1).tolist(), self.prefill_call_tokens)
        options = dict(do_sample=False, temperature=None, top_p=None, top_k=None, **self.options(eos_token_id))
        prefills = [self._prefill(everything if len(buckets) == 1 else process(rows), width, options)
                    for rows in buckets]
        merged_row = {i: r for r, i in enumerate(i for rows in buckets for i in rows)}
        index = torch.tensor([merged_row[i] for i, c in enumerate(counts) for _ in range(c)], device=self.device)
        # Qwen2-VL-family models keep each sequence's M-RoPE offset (image tokens shift the positions of the text
        # after them) in a public `rope_deltas` attribute, and generate() reads it to place the tokens it feeds
        # on top of a cache. Each bucket's prefill replaced the previous bucket's; generate() takes no deltas and
        # recomputes them only in a call that starts without a cache, so the merged rows' are set here.
        for module in prefills[0].rope_deltas:
            module.rope_deltas = torch.cat([p.rope_deltas[module] for p in prefills])[index]
        cache = StaticCache(config=self.model.config, max_cache_len=width + max_new_tokens)
        for layer in range(len(prefills[0].cache.layers)):
            keys, values = [], []
            for p in prefills:
                bucket = p.cache.layers[layer]
                pad = (0, 0, width - 1 - bucket.keys.shape[2], 0)
                keys.append(F.pad(bucket.keys, pad))
                values.append(F.pad(bucket.values, pad))
                bucket.keys = bucket.values = None  # free the bucket's copy
            cache.update(torch.cat(keys)[index], torch.cat(values)[index], layer)
        sampler = [] if greedy else [TopKTopPSampler(self.sampling, self.generator)]
        ids = self.model.generate(input_ids=torch.cat([p.ids for p in prefills])[index],
                                  attention_mask=torch.cat([p.mask for p in prefills])[index], **{CACHE: cache},
                                  max_new_tokens=max_new_tokens, logits_processor=LogitsProcessorList(sampler),
                                  **options)
        return self.new_tokens(ids, width, eos_token_id)

    def _prefill(self, inputs: dict[str, torch.Tensor], width: int, options: dict) -> _Prefill:
        """The cache of a bucket's prompts less their last token (its one generated token is dropped)."""
        head = {k: v[:, :-1] if k in PER_TOKEN_INPUTS else v for k, v in inputs.items()}
        out = self.model.generate(**head, max_new_tokens=1, return_dict_in_generate=True, **options)
        pad = width - inputs["input_ids"].shape[1]
        return _Prefill(F.pad(inputs["input_ids"], (pad, 0), value=self.processor.tokenizer.pad_token_id),
                        F.pad(inputs["attention_mask"], (pad, 0), value=0), getattr(out, CACHE),
                        {m: m.rope_deltas for m in self.model.modules() if getattr(m, "rope_deltas", None) is not None})


def make_engine(generation: Generation, model, processor, sampling: Sampling, seed: int) -> Engine:
    """The engine `generation.engine` names: "fast" (`FastEngine`) or "hf" (`HFEngine`)."""
    if generation.engine == "fast":
        return FastEngine(model, processor, sampling, seed, generation.prefill_call_tokens,
                          generation.decode_attention)
    if generation.engine == "hf":
        return HFEngine(model, processor, sampling, seed)
    raise ValueError(f"generation.engine must be one of {', '.join(ENGINES)}, not {generation.engine!r}")
