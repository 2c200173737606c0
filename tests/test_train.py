"""Loss masking: prompt tokens (image tokens included) carry no loss; target tokens and end-of-turn do."""

from __future__ import annotations

import torch

from envs.episode import Observation
from helpers import PROMPTS
from reflection.examples import Sample
from reflection.train import IGNORE, collate, target_loss


def _samples(image: str) -> list[Sample]:
    short = Observation(text="Subtract all cubes.", images=[image], answer_format="Answer: <a whole number>")
    long = Observation(text="Subtract all red spheres. How many objects are left? " * 3, images=[image],
                       answer_format="Answer: <a whole number>")
    return [Sample(PROMPTS.cot_prompt(short), "There are 3.\nAnswer: 3", "sft"), Sample(PROMPTS.cot_prompt(long), "Answer: 12", "select")]


def test_labels_mask_every_prompt_token(tiny, clevr_dir):
    model, processor = tiny
    image = str(next((clevr_dir / "images").iterdir()))
    samples = _samples(image)
    batch = collate(processor, samples, max_length=1024)
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for i, s in enumerate(samples):
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i]
        learned = labels != IGNORE
        # exactly the target tokens + end-of-turn are learned, and they sit at the end of the real tokens
        target_ids = tok(s.target, add_special_tokens=False)["input_ids"] + [eos]
        assert labels[learned].tolist() == target_ids
        assert ids[learned].tolist() == target_ids
        n = int(mask.sum())
        assert learned[:n].tolist() == [False] * (n - len(target_ids)) + [True] * len(target_ids)
        assert not learned[n:].any()  # padding is masked
        # the prompt part is the processor's own rendering of the prompt (image tokens expanded)
        prompt = processor(text=[processor.apply_chat_template(s.messages, add_generation_prompt=True)],
                           images=[[__import__("PIL.Image").Image.open(image).convert("RGB")]], return_tensors="pt")
        assert ids[: n - len(target_ids)].tolist() == prompt["input_ids"][0].tolist()
        assert (ids[: n - len(target_ids)] == processor.image_token_id).sum() > 0  # images are in the prompt
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape


def test_loss_equals_cross_entropy_on_target_tokens_only(tiny, clevr_dir):
    model, processor = tiny
    image = str(next((clevr_dir / "images").iterdir()))
    batch = collate(processor, _samples(image), max_length=1024)
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
        assert torch.allclose(out.loss, manual, atol=1e-5)
        assert torch.allclose(target_loss(model, batch), manual, atol=1e-5)  # the training loss
        # changing a prompt token's label-free position must not change which tokens count
        all_tokens = torch.nn.functional.cross_entropy(logits[batch["attention_mask"][:, 1:] == 1],
                                                       batch["input_ids"][:, 1:][batch["attention_mask"][:, 1:] == 1])
        assert not torch.allclose(out.loss, all_tokens)


def test_max_length_cuts_the_target_not_the_prompt(tiny, clevr_dir):
    _, processor = tiny
    image = str(next((clevr_dir / "images").iterdir()))
    samples = _samples(image)[:1]
    full = collate(processor, samples, max_length=1024)
    n = int(full["attention_mask"][0].sum())
    cut = collate(processor, samples, max_length=n - 2)
    assert cut["input_ids"].shape[1] == n - 2
    assert (cut["labels"][0] != IGNORE).sum() == (full["labels"][0] != IGNORE).sum() - 2
