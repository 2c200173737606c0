"""Batched generation behind one small interface: `Policy.generate(prompts, n, greedy) -> texts`.

Anything that turns chat prompts into completions (a vLLM sampler, an API) can stand in for `Policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

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


class Policy:
    """A model + processor that completes chat prompts in batches."""

    def __init__(self, model, processor, batch_size: int = 32, sampling: Sampling | None = None, seed: int = 0,
                 progress: bool = True):
        self.model, self.processor = model, processor
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

        Sequences are sorted by prompt length before batching, so a batch wastes little on padding.
        """
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        jobs = [(i, p) for i, (p, c) in enumerate(zip(prompts, counts)) for _ in range(c)]
        texts = [self.processor.apply_chat_template(p, add_generation_prompt=True) for p in prompts]
        jobs.sort(key=lambda job: len(texts[job[0]]))
        out: list[list[str]] = [[] for _ in prompts]
        batches = [jobs[i:i + self.batch_size] for i in range(0, len(jobs), self.batch_size)]
        for batch in tqdm(batches, desc=desc, disable=not (self.progress and progress), leave=False):
            for (i, _), completion in zip(batch, self._generate_batch(
                    [texts[i] for i, _ in batch], [prompt_images(p) for _, p in batch], greedy,
                    max_new_tokens or self.sampling.max_new_tokens)):
                out[i].append(completion)
        return out

    @torch.inference_mode()
    def _generate_batch(self, texts: list[str], images: list[list[Image.Image]], greedy: bool,
                        max_new_tokens: int) -> list[str]:
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        has_images = any(images)
        inputs = self.processor(text=texts, images=images if has_images else None, return_tensors="pt",
                                padding=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        processors = LogitsProcessorList([] if greedy else [TopKTopPSampler(self.sampling, self.generator)])
        with autocast(self.model):
            output = self.model.generate(
                **inputs, do_sample=False, max_new_tokens=max_new_tokens, logits_processor=processors,
                eos_token_id=self.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                temperature=None, top_p=None, top_k=None,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
