"""Batched generation behind one small interface: `Policy.generate(prompts, n, greedy) -> texts`.

`Policy` turns chat prompts into batches (chat template, images, the completions of a prompt kept in one
batch) and the engine's tokens into texts; a generation engine (agent/generation.py) completes each batch.
Anything that turns chat prompts into completions (a vLLM sampler, an API) can stand in for `Policy`.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from PIL import Image
from tqdm.auto import tqdm

from agent.generation import Generation, Sampling, make_engine
from agent.models import end_of_turn_token_id
from agent.prompts import Messages
from envs.qa import DataError

__all__ = ["Generation", "Policy", "Sampling", "prompt_images"]
log = logging.getLogger(__name__)


@lru_cache(maxsize=4096)
def _load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # missing, truncated or not an image (PIL raises all three)
        raise DataError(f"image {path}: cannot be read ({type(e).__name__}: {e}); the dataset or run directory is "
                        "incomplete or corrupt") from e


def prompt_images(messages: Messages) -> list[Image.Image]:
    return [_load_image(part["path"]) for m in messages if not isinstance(m["content"], str)
            for part in m["content"] if part["type"] == "image"]


class Policy:
    """A model + processor that completes chat prompts in batches."""

    def __init__(self, model, processor, generation: Generation, sampling: Sampling, seed: int,
                 progress: bool = True):
        """`generation` picks the engine (agent/generation.py) and the batch size; sampled completions are
        reproducible from `seed`."""
        self.model, self.processor = model, processor
        self.batch_size = generation.batch_size
        self.sampling = sampling
        self.progress = progress
        self.engine = make_engine(generation, model, processor, sampling, seed)
        self.eos_token_id = end_of_turn_token_id(processor)  # <|im_end|>, <end_of_utterance>, </s>, ...
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self.overlong_prompts = 0  # prompts left unanswered for being longer than the context

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes when the model writes it (budgets sized from known answers)."""
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[Messages], n: int | list[int] = 1, greedy: bool = False,
                 max_new_tokens: int | None = None, desc: str = "generate", progress: bool = True) -> list[list[str]]:
        """Complete each prompt n times (n may differ per prompt); returns texts grouped by prompt.

        Prompts are sorted by length before batching, so a batch wastes little on padding. A batch holds up
        to `batch_size` sequences, and the n completions of a prompt go to the engine together (the fast engine
        prefills the prompt once for them).
        """
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        texts = [self.processor.apply_chat_template(p, add_generation_prompt=True) for p in prompts]
        # A prompt past the model's context would be completed from positions it never saw: silently wrong text.
        # It gets empty completions instead (an unparsable answer, a failed step), counted in `overlong_prompts`.
        budget = max_new_tokens or self.sampling.max_new_tokens
        too_long = [i for i, c in enumerate(counts) if c > 0 and self.context_length
                    and self.count_tokens(texts[i]) + budget > self.context_length]
        if too_long:
            self.overlong_prompts += len(too_long)
            log.warning("%s: %d prompts are longer than the model's context (%d tokens with %d new): left "
                        "unanswered (%d so far)", desc, len(too_long), self.context_length, budget, self.overlong_prompts)
            counts = [0 if i in too_long else c for i, c in enumerate(counts)]
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
        out: list[list[str]] = [[""] * (n if isinstance(n, int) else n[i]) if i in too_long else []
                                for i in range(len(prompts))]
        for batch in tqdm([b for b in batches if b], desc=desc, disable=not (self.progress and progress), leave=False):
            tokens = iter(self.engine.generate(
                [texts[i] for i, _ in batch], [prompt_images(prompts[i]) for i, _ in batch], [c for _, c in batch],
                greedy, max_new_tokens or self.sampling.max_new_tokens, self.eos_token_id))
            for i, c in batch:
                out[i] += [self.processor.tokenizer.decode(next(tokens), skip_special_tokens=True).strip()
                           for _ in range(c)]
        return out
