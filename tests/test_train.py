"""Loss masking, per-example loss weighting, and train.max_length: prompt tokens (image tokens included) carry
no loss; target tokens and end-of-turn do; a too-long example loses text from the middle of its prompt, never
its target or images, or is skipped when it cannot fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from envs.episode import Observation
from helpers import PROMPTS
from reflection.examples import Sample
from reflection.train import IGNORE, KEEP_TAIL, TrainConfig, collate, example_losses, target_loss, train

CONF = Path(__file__).resolve().parents[1] / "conf"


def _samples(image: str) -> list[Sample]:
    short = Observation(text="Subtract all cubes.", images=[image], answer_format="Answer: <a whole number>")
    long = Observation(text="Subtract all red spheres. How many objects are left? " * 3, images=[image],
                       answer_format="Answer: <a whole number>")
    return [Sample(PROMPTS.cot_prompt(short), "There are 3.\nAnswer: 3", "sft"), Sample(PROMPTS.cot_prompt(long), "Answer: 12", "select")]


def _dom_sample(image: str, lines: int = 150, target: str = "Item 7 is the button.\nAction: click(ref=7)",
                kind: str = "sft") -> Sample:
    """A web-like prompt whose text context (a long DOM listing) makes it far longer than its instruction."""
    dom = "\n".join(f'[{i}] button "Item {i}" @({i},{2 * i} 40x12)' for i in range(lines))
    obs = Observation(text="Click the button Item 7.", images=[image], context=dom, answer_format="Action: <action>")
    return Sample(PROMPTS.cot_prompt(obs), target, kind)


def _image(clevr_dir) -> str:
    return str(sorted((clevr_dir / "images").iterdir())[0])


def _target_ids(processor, s: Sample) -> list[int]:
    tok = processor.tokenizer
    return tok(s.target, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]


def _row(batch, i: int = 0) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, mm_token_type_ids) of row i, padding removed."""
    n = int(batch["attention_mask"][i].sum())
    return (batch["input_ids"][i, :n].tolist(), batch["labels"][i, :n].tolist(),
            batch["mm_token_type_ids"][i, :n].tolist())


def test_labels_mask_every_prompt_token(tiny, clevr_dir):
    model, processor = tiny
    image = _image(clevr_dir)
    samples = _samples(image)
    collated = collate(processor, samples, max_length=1024)
    assert collated.kept == [0, 1] and collated.truncated == [] and collated.skipped == []
    batch = collated.batch
    for i, s in enumerate(samples):
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i]
        learned = labels != IGNORE
        # exactly the target tokens + end-of-turn are learned, and they sit at the end of the real tokens
        target_ids = _target_ids(processor, s)
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


def test_loss_is_the_mean_over_examples_of_each_examples_token_mean(tiny, clevr_dir):
    """Two targets of very different lengths weigh the same: the batch loss is the mean of the per-example
    means, not the token mean (which is what the model's own loss computes)."""
    model, processor = tiny
    image = _image(clevr_dir)
    short = _samples(image)[1]  # "Answer: 12"
    long = Sample(short.messages, "There are 3 red spheres and 9 other objects. " * 6 + "\nAnswer: 12", "refine")
    samples = [short, long]
    batch = collate(processor, samples, max_length=1024).batch
    n_short, n_long = (int((batch["labels"][i] != IGNORE).sum()) for i in range(2))
    assert n_long > 10 * n_short
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        token_mean = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
        assert torch.allclose(out.loss, token_mean, atol=1e-5)  # the model's own loss: a token mean
        per_example = torch.stack([torch.nn.functional.cross_entropy(logits[i][keep[i]], labels[i][keep[i]])
                                   for i in range(2)])  # by hand: each example's mean over its own tokens
        assert torch.allclose(example_losses(model, batch), per_example, atol=1e-5)
        loss = target_loss(model, batch)
        assert torch.allclose(loss, per_example.mean(), atol=1e-5)  # the training loss
        assert not torch.allclose(loss, token_mean, atol=1e-4)
        # each example counts the same, whatever it shares a batch with
        alone = [target_loss(model, collate(processor, [s], max_length=1024).batch) for s in samples]
        assert torch.allclose(loss, (alone[0] + alone[1]) / 2, atol=1e-5)
        # prompt tokens never count
        all_tokens = torch.nn.functional.cross_entropy(logits[batch["attention_mask"][:, 1:] == 1],
                                                       batch["input_ids"][:, 1:][batch["attention_mask"][:, 1:] == 1])
        assert not torch.allclose(out.loss, all_tokens)


def test_a_prompt_longer_than_max_length_loses_text_from_its_middle_not_its_target(tiny, clevr_dir):
    model, processor = tiny
    sample = _dom_sample(_image(clevr_dir))
    target = _target_ids(processor, sample)
    full_ids, _, full_mm = _row(collate(processor, [sample], max_length=10**6).batch)
    full_prompt = full_ids[: len(full_ids) - len(target)]
    max_length = len(full_prompt) // 2
    assert len(full_prompt) > max_length > len(target) + KEEP_TAIL + 20  # the prompt alone is over the limit

    collated = collate(processor, [sample], max_length=max_length)
    ids, labels, mm = _row(collated.batch)
    # the target is whole, and learned
    assert ids[-len(target):] == target and [t for t in labels if t != IGNORE] == target
    assert len(ids) == max_length  # cut exactly to the limit
    assert collated.kept == [0] and collated.truncated == [0] and collated.skipped == []
    prompt = ids[: len(ids) - len(target)]
    assert all(t == IGNORE for t in labels[: len(prompt)])
    # everything up to and including the last image token (and <|vision_end|>) is kept
    image_id = processor.image_token_id
    last_image = max(j for j, t in enumerate(full_prompt) if t == image_id)
    head = last_image + 2
    assert processor.tokenizer.convert_ids_to_tokens(full_prompt[last_image + 1]) == "<|vision_end|>"
    assert prompt[:head] == full_prompt[:head]
    assert prompt.count(image_id) == full_prompt.count(image_id) > 0
    # the prompt's last KEEP_TAIL tokens (the instruction and the assistant header) are kept
    assert prompt[-KEEP_TAIL:] == full_prompt[-KEEP_TAIL:]
    decoded = processor.tokenizer.decode(prompt)
    assert "then give the final answer as: Action: <action>" in decoded and decoded.endswith("<|im_start|>assistant\n")
    # one span was cut, from the middle of the text: the question at its start is kept, and so are the DOM's
    # first and last lines
    cut = len(full_prompt) - len(prompt)
    start = next(j for j in range(len(prompt)) if prompt[j] != full_prompt[j])
    assert head < start and start + cut <= len(full_prompt) - KEEP_TAIL
    assert prompt == full_prompt[:start] + full_prompt[start + cut:]
    assert 'Click the button Item 7.\n[0] button "Item 0"' in decoded and '[149] button "Item 149"' in decoded
    assert '[75] button "Item 75"' not in decoded
    # mm_token_type_ids stay aligned with the image tokens
    assert mm == full_mm[:start] + full_mm[start + cut:]
    assert [j for j, t in enumerate(mm) if t] == [j for j, t in enumerate(ids) if t == image_id]
    # and the model trains on it
    with torch.no_grad():
        assert torch.isfinite(target_loss(model, collated.batch))


def test_an_example_that_cannot_fit_is_skipped_and_counted(tiny, clevr_dir):
    _, processor = tiny
    image = _image(clevr_dir)
    short = _samples(image)[0]
    solution = " ".join(f"Item {i} is not it." for i in range(40)) + "\nAction: click(ref=7)"
    long = _dom_sample(image, target=solution)  # its target alone nearly fills the limit
    alone = collate(processor, [short], max_length=1024)
    max_length = int(alone.batch["attention_mask"][0].sum())
    assert len(_target_ids(processor, long)) + KEEP_TAIL > max_length

    collated = collate(processor, [long, short], max_length=max_length)
    # the batch is the kept example alone: its tokens, and its image only
    assert collated.batch["input_ids"].shape[0] == 1
    assert collated.batch["image_grid_thw"].shape[0] == 1
    for key in ("input_ids", "labels", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(collated.batch[key], alone.batch[key]), key
    assert collated.skipped == [0] and collated.kept == [1] and collated.truncated == []
    # a batch of examples that all cannot fit is no batch
    nothing = collate(processor, [long, long], max_length=max_length)
    assert nothing.batch is None and nothing.kept == [] and nothing.skipped == [0, 1]


def _trainable_tiny():
    from agent.models import add_adapter
    from agent.offline_models import build_tiny

    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    model, processor = build_tiny(**cfg.tiny)
    return add_adapter(model, cfg), processor


def _config(max_length: int, **overrides) -> TrainConfig:
    return TrainConfig(**{**OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").train), "epochs": 2,
                          "batch_size": 2, "grad_accum": 1, "max_length": max_length, "seed": 0, **overrides})


def test_train_reports_loss_per_objective_and_what_max_length_did(clevr_dir, caplog):
    model, processor = _trainable_tiny()
    image = _image(clevr_dir)
    short, select = _samples(image)
    qa = Sample(short.messages, "Answer: 3", "qa")
    fits = _dom_sample(image, lines=40)  # its prompt is cut
    solution = " ".join(f"Item {i} is not it." for i in range(40)) + "\nAction: click(ref=7)"
    too_long = _dom_sample(image, target=solution, kind="refine")  # cannot fit
    max_length = int(collate(processor, [select], max_length=1024).batch["attention_mask"][0].sum()) + 8
    samples = [qa, qa, select, select, fits, too_long]
    with caplog.at_level("WARNING"):
        stats = train(model, processor, samples, _config(max_length), [], desc="t")
    # each example is counted once, though it was seen in both epochs
    assert stats["truncated_examples"] == 1 and stats["skipped_examples"] == 1
    assert "train.max_length" in caplog.text
    # a loss per objective trained: not refine (its one example was skipped), not the absent ones
    assert {k for k in stats if k.startswith("loss_")} == {"loss_qa", "loss_select", "loss_sft"}
    assert all(stats[k] > 0 and stats[k] == stats[k] for k in stats if k.startswith("loss_"))
    assert stats["train_loss"] > 0 and stats["train_steps"] >= 5  # 6 batches, at most one of them skipped

    with pytest.raises(ValueError, match=r"train\.max_length=%d" % max_length):
        train(model, processor, [too_long, too_long], _config(max_length), [], desc="t")


def test_train_stage_writes_the_new_figures_as_metric_rows(tmp_path):
    from hydra import compose, initialize_config_dir

    from reflection.loop import Run, train_stage

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"run_dir={tmp_path / 'run'}", "model=tiny", "env=synth_clevr", "env.n_train=4", "env.n_test=2",
            "warmup.epochs=1", "train.batch_size=2"])
    run = Run(cfg)
    image = str(sorted((run.dir / "data" / "synth_clevr" / "images").iterdir())[0])
    short = _samples(image)[0]
    data = {"qa": [Sample(short.messages, "Answer: 3", "qa")] * 2, "teacher": [Sample(short.messages, short.target, "teacher")] * 2}
    train_stage(run, 0, data)
    rows = {r["metric"]: r["value"] for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train" and r["iteration"] == 0}
    assert {"train_loss", "loss_qa", "loss_teacher", "truncated_examples", "skipped_examples"} <= rows.keys()
    assert "loss_select" not in rows and rows["truncated_examples"] == 0 == rows["skipped_examples"]


class _RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps a copy of the gradients it steps on (after clipping), one list per optimizer step."""

    steps: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        _RecordingAdamW.steps.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def _qa_samples(image: str, n: int) -> list[Sample]:
    """n examples with targets of different lengths (so an unweighted token mean would differ)."""
    obs = Observation(text="Subtract all cubes.", images=[image], answer_format="Answer: <a whole number>")
    return [Sample(PROMPTS.cot_prompt(obs), "There are 3 cubes. " * i + f"\nAnswer: {i}", "sft") for i in range(n)]


def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(clevr_dir, monkeypatch):
    """Three examples in one batch, or in micro-batches of 2 + 1 accumulated: one optimizer step, the same
    gradient (each example weighted 1/3, not each micro-batch 1/2)."""
    monkeypatch.setattr(torch.optim, "AdamW", _RecordingAdamW)
    samples = _qa_samples(_image(clevr_dir), 3)
    grads, stats = [], []
    for batch_size, grad_accum in ((3, 1), (2, 2)):
        torch.manual_seed(0)  # the same LoRA initialisation
        model, processor = _trainable_tiny()
        _RecordingAdamW.steps = []
        stats.append(train(model, processor, samples, _config(1024, epochs=1, batch_size=batch_size,
                                                               grad_accum=grad_accum), [], desc="t"))
        assert len(_RecordingAdamW.steps) == 1
        grads.append(_RecordingAdamW.steps[0])
    assert [s["train_steps"] for s in stats] == [1, 2] and [s["optimizer_steps"] for s in stats] == [1, 1]
    assert any(g.abs().sum() > 0 for g in grads[0])
    for big, accumulated in zip(*grads):
        torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-7)


def test_the_lr_schedule_counts_optimizer_steps_and_ends_at_its_end_value(clevr_dir, monkeypatch):
    """5 micro-batches with grad_accum=2: 3 optimizer steps (the last takes one micro-batch), 3 scheduler steps,
    and the cosine ends at 0. Memory is reported."""
    monkeypatch.setattr(torch.optim, "AdamW", _RecordingAdamW)
    _RecordingAdamW.steps = []
    model, processor = _trainable_tiny()
    stats = train(model, processor, _qa_samples(_image(clevr_dir), 5), _config(1024, epochs=1, batch_size=1,
                                                                             grad_accum=2), [], desc="t")
    assert stats["train_steps"] == 5 and stats["optimizer_steps"] == 3 == len(_RecordingAdamW.steps)
    assert stats["final_lr"] == 0.0 and stats["world_size"] == 1
    assert 0 < stats["peak_memory_mb"] < 64 * 1024


def test_save_to_writes_the_adapter_and_the_modules_trained_in_full(clevr_dir, tmp_path):
    """`save_to` holds what the loop commits as iter_K/adapter: the LoRA weights as trained, and the fully
    trained modules' weights, which load_full_modules puts back."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from agent.models import FULL_MODULES_FILE, add_adapter, load_full_modules
    from agent.offline_models import build_tiny

    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    cfg.train_modules = ["visual.merger"]
    model, processor = build_tiny(**cfg.tiny)
    model = add_adapter(model, cfg)
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier try")
    train(model, processor, _qa_samples(_image(clevr_dir), 2), _config(1024, epochs=1), list(cfg.train_modules),
          desc="t", save_to=out)
    assert not (out / "stale.txt").exists() and (out / "adapter_config.json").exists()
    trained = {n: p for n, p in model.named_parameters() if "lora_" in n}
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert len(saved) == len(trained) > 0
    full = load_file(str(out / FULL_MODULES_FILE))
    assert full and all(n.startswith("model.visual.merger") or "visual.merger" in n for n in full)

    fresh, _ = build_tiny(**cfg.tiny)
    load_full_modules(fresh, out)
    reloaded = PeftModel.from_pretrained(fresh, str(out))
    now = dict(reloaded.named_parameters())
    for n, p in trained.items():
        torch.testing.assert_close(now[n].float(), p.detach().float())
    base = dict(model.get_base_model().named_parameters())
    for n, w in full.items():
        torch.testing.assert_close(w, base[n].detach().float())

    # FSDP's path (run here on the model's own state, as a gather would return it) writes the same tensors
    from reflection.train import save_state

    gathered = tmp_path / "gathered"
    save_state(model, model.state_dict(), gathered, list(cfg.train_modules))
    for f in ("adapter_model.safetensors", FULL_MODULES_FILE):
        ours, theirs = load_file(str(gathered / f)), load_file(str(out / f))
        assert ours.keys() == theirs.keys()
        for n in ours:
            torch.testing.assert_close(ours[n], theirs[n])
