"""Generation engines: the fast path (length buckets, merged static cache, matmul decode) against plain
`model.generate` (engine "hf"), the model left as found, logits processors on every token, and the parts."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from agent.generation import (SDPA_MATMUL_DECODE, TopKTopPSampler, attn_implementations, make_engine,
                              prefill_buckets, sdpa_matmul_decode)
from agent.policy import prompt_images
from envs.episode import Observation
from helpers import PROMPTS, generation, make_policy, sampling

ROOT = Path(__file__).resolve().parents[1]


def _prompts(clevr_dir, k: int):
    images = sorted((clevr_dir / "images").iterdir())[:k]
    return [PROMPTS.cot_prompt(Observation(text=f"Subtract all cubes {i}.", images=[str(p)])) for i, p in enumerate(images)]


def _mixed_prompts(clevr_dir, k: int = 6, long: int = 30):
    """Short, long, short, ...: prompts with images whose lengths put them into different prefill buckets."""
    images = sorted((clevr_dir / "images").iterdir())[:k]
    return [PROMPTS.cot_prompt(Observation(text="Count the cubes. " * (long if i % 2 else 1) + f"Question {i}.",
                                   images=[str(images[i // 2])])) for i in range(k)]


@contextlib.contextmanager
def _counting_generate_calls(model):
    """The batch size of every `model.generate` call made in the block."""
    calls, generate = [], model.generate
    model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or generate(**kw)
    try:
        yield calls
    finally:
        del model.generate  # the instance attribute: back to the class's method


@contextlib.contextmanager
def _generation_config(model, **settings):
    old = {k: getattr(model.generation_config, k) for k in settings}
    for k, v in settings.items():
        setattr(model.generation_config, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(model.generation_config, k, v)


def _tokens(model, processor, engine: str, prompts, counts, greedy=True, max_new_tokens=6, seed=0, **options):
    texts = [processor.apply_chat_template(p, add_generation_prompt=True) for p in prompts]
    engine = make_engine(generation(engine=engine, **options), model, processor, sampling(), seed)
    return engine.generate(texts, [prompt_images(p) for p in prompts], counts, greedy, max_new_tokens, None)


# ----------------------------------------------------------------------------------------- fast == hf


@pytest.mark.parametrize("setting", [{}, {"repetition_penalty": 3.0}])
def test_fast_and_hf_engines_complete_greedily_alike(tiny, clevr_dir, setting):
    """fp32 greedy: several prefill buckets, images, n completions per prompt; engine tokens and Policy texts.
    The random tiny model echoes its last input token (tied embeddings) unless a repetition penalty stops it."""
    model, processor = tiny
    prompts = _mixed_prompts(clevr_dir)
    counts = [1, 2, 1, 3, 1, 1]
    with _generation_config(model, **setting):
        with _counting_generate_calls(model) as calls:
            fast = _tokens(model, processor, "fast", prompts, counts, max_new_tokens=8)
        assert len(calls) == 3, calls  # two length buckets (default prefill_call_tokens), then one decode call
        assert fast == _tokens(model, processor, "hf", prompts, counts, max_new_tokens=8)
        assert len({tuple(t) for t in fast}) > (2 if setting else 0)
        policies = [make_policy(model, processor, batch_size=16, max_new_tokens=8, progress=False,
                           engine=engine) for engine in ("fast", "hf")]
        texts = [policy.generate(prompts, n=counts, greedy=True) for policy in policies]
        assert texts[0] == texts[1]


@pytest.mark.parametrize("setting, changes", [
    ({"repetition_penalty": 1.3}, None),  # too weak to move the tiny model's greedy choices
    ({"repetition_penalty": 3.0}, "first"), ({"no_repeat_ngram_size": 2}, "later"), ("bad_words", "first")])
def test_the_first_token_gets_the_models_logits_processors(tiny, clevr_dir, setting, changes):
    """A generation_config's processors (repetition penalty, n-gram ban, bad words) apply to the first new token
    as to later ones: fast greedy == hf greedy."""
    model, processor = tiny
    prompts = _mixed_prompts(clevr_dir)
    plain = _tokens(model, processor, "hf", prompts, [1] * 6)
    if setting == "bad_words":
        setting = {"bad_words_ids": [[plain[0][0]]]}  # ban the token greedy decoding starts with
    with _generation_config(model, **setting):
        fast = _tokens(model, processor, "fast", prompts, [1] * 6)
        assert fast == _tokens(model, processor, "hf", prompts, [1] * 6)
    assert (fast != plain) == (changes is not None)
    assert ([t[0] for t in fast] != [t[0] for t in plain]) == (changes == "first")


@pytest.fixture(scope="module")
def smolvlm_offline(tmp_path_factory):
    """The offline default model in fp32, converted into a temporary cache (never ~/.cache): ~25 s."""
    from omegaconf import OmegaConf

    from agent.models import load_backbone

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smolvlm_offline.yaml")
    cfg.dtype, cfg.cache_dir = "fp32", str(tmp_path_factory.mktemp("r3v_cache") / "smolvlm_offline")
    model, processor = load_backbone(cfg)
    return model.eval(), processor


def test_fast_and_hf_engines_complete_greedily_alike_on_the_offline_default(smolvlm_offline, clevr_dir):
    """SmolLM2 weights, Idefics3 image tokens, two prefill buckets; also with a repetition penalty."""
    model, processor = smolvlm_offline
    prompts = _mixed_prompts(clevr_dir, k=4)
    counts = [1, 1, 2, 1]
    with _counting_generate_calls(model) as calls:
        fast = _tokens(model, processor, "fast", prompts, counts, max_new_tokens=5)
    assert len(calls) == 3, calls  # two buckets, one decode
    assert fast == _tokens(model, processor, "hf", prompts, counts, max_new_tokens=5)
    with _generation_config(model, repetition_penalty=1.3):
        penalised = _tokens(model, processor, "fast", prompts, counts, max_new_tokens=5)
        assert penalised == _tokens(model, processor, "hf", prompts, counts, max_new_tokens=5)
    assert [t[0] for t in penalised] != [t[0] for t in fast]  # the penalty changed a first token


# ------------------------------------------------------------------------------ the fast engine's parts


def test_the_fast_engine_leaves_the_model_as_it_found_it(tiny, clevr_dir):
    """Matmul decode attention and the head's contiguous-input hook hold during a call only, errors included."""
    model, processor = tiny
    head = model.get_output_embeddings()
    before = (attn_implementations(model.config), dict(head._forward_pre_hooks))
    during = []
    probe = head.register_forward_hook(lambda m, args, out: during.append(attn_implementations(model.config)))
    try:
        make_policy(model, processor, max_new_tokens=3, progress=False,
               decode_attention="matmul").generate(_prompts(clevr_dir, 2), n=2)
    finally:
        probe.remove()
    assert during and all(d == {"": SDPA_MATMUL_DECODE, "vision_config": {"": SDPA_MATMUL_DECODE},
                                "text_config": {"": SDPA_MATMUL_DECODE}} for d in during)
    assert (attn_implementations(model.config), dict(head._forward_pre_hooks)) == before
    assert before[0]["text_config"] == {"": "sdpa"}
    engine = make_engine(generation(engine="fast", decode_attention="matmul"), model, processor, sampling(), 0)
    with pytest.raises(RuntimeError, match="mid-call"), engine.patched():
        assert model.config.text_config._attn_implementation == SDPA_MATMUL_DECODE
        assert len(head._forward_pre_hooks) == len(before[1]) + 1
        raise RuntimeError("mid-call")
    assert (attn_implementations(model.config), dict(head._forward_pre_hooks)) == before


def test_an_unknown_engine_or_decode_attention_is_refused(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="generation.engine must be one of fast, hf, not 'vllm'"):
        make_policy(model, processor, engine="vllm")
    with pytest.raises(ValueError, match="decode_attention"):
        make_policy(model, processor, decode_attention="flash")


def test_length_buckets_and_matmul_decode_leave_completions_unchanged(tiny, clevr_dir):
    """Prompts of very different lengths, prefilled in buckets and decoded with the matmul kernel, complete
    exactly as in one padded batch decoded with sdpa (fp32), greedy and sampled from the same seed."""
    model, processor = tiny
    prompts = _mixed_prompts(clevr_dir)
    outs = []
    for call_tokens, attention in ((0, "matmul"), (10**6, "sdpa")):
        with _counting_generate_calls(model) as calls:
            policy = make_policy(model, processor, batch_size=16, max_new_tokens=8, seed=5,
                            progress=False, prefill_call_tokens=call_tokens, decode_attention=attention)
            outs.append((policy.generate(prompts, n=1, greedy=True), policy.generate(prompts, n=[2, 1, 1, 3, 1, 2]),
                         list(calls)))
    (greedy_b, sampled_b, calls_b), (greedy_1, sampled_1, calls_1) = outs
    assert calls_b[:2] == [3, 3] and calls_1[:1] == [6]  # two length buckets, against one padded batch
    assert greedy_b == greedy_1 and sampled_b == sampled_1
    assert len(set(sampled_b[3])) > 1


def test_completions_of_one_prompt_share_its_prefill_without_changing_them(tiny, clevr_dir):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 3)

    def policy() -> Policy:
        return make_policy(model, processor, batch_size=8, max_new_tokens=8, seed=3, progress=False)

    # the same seed draws the same tokens whether a prompt's copies are prefilled once (shared) or each alone
    shared = policy().generate(prompts, n=[2, 1, 3])
    alone = [t for (t,) in policy().generate([prompts[0]] * 2 + [prompts[1]] + [prompts[2]] * 3, n=1)]
    assert shared == [alone[0:2], alone[2:3], alone[3:6]]
    assert len(set(shared[2])) > 1 and all(shared[2])  # the copies sampled their own (non-empty) completions
    one_token = policy().generate(prompts, n=[2, 1, 3], max_new_tokens=1)
    alone = [t for (t,) in policy().generate([prompts[0]] * 2 + [prompts[1]] + [prompts[2]] * 3, n=1,
                                             max_new_tokens=1)]
    assert one_token == [alone[0:2], alone[2:3], alone[3:6]]


def test_output_head_reads_contiguous_hidden_states(tiny, clevr_dir):
    """The prefill's last-position slice reaches the head contiguous (else CPU linear() copies the weight per row)."""
    model, processor = tiny
    policy = make_policy(model, processor, batch_size=4, max_new_tokens=3, progress=False)
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[0], args[0].is_contiguous())))
    try:
        policy.generate(_prompts(clevr_dir, 3), n=1, greedy=True)
    finally:
        hook.remove()
    assert seen and seen[0][0] == 3 and all(ok for _, ok in seen)


def test_the_hf_engine_samples_reproducibly_from_the_seed(tiny, clevr_dir):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 2)
    runs = [_tokens(model, processor, "hf", prompts, [3, 2], greedy=False, seed=s) for s in (7, 7, 8)]
    assert [len(r) for r in runs] == [5, 5, 5] and runs[0] == runs[1] and runs[0] != runs[2]
    assert len({tuple(t) for t in runs[0][:3]}) > 1  # a prompt's completions are sampled each


def test_sampler_keeps_only_top_k_and_top_p():
    gen = torch.Generator().manual_seed(0)
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [0.0] * 6]) + 1e-12).repeat(2000, 1)
    picks = TopKTopPSampler(sampling(temperature=1.0, top_k=3, top_p=1.0), gen)(None, scores).argmax(-1)
    freq = torch.bincount(picks, minlength=10).float() / len(picks)
    assert set(picks.tolist()) == {0, 1, 2}  # token 3 is outside the top 3
    assert abs(freq[0] - 0.5 / 0.95) < 0.05 and abs(freq[2] - 0.15 / 0.95) < 0.04
    picks = TopKTopPSampler(sampling(temperature=1.0, top_k=50, top_p=0.7), gen)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7: the rest are cut
    picks = TopKTopPSampler(sampling(temperature=1e-6, top_k=50, top_p=0.95), gen)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {0}  # temperature -> 0 is greedy


def test_prefill_buckets_are_the_cheapest_split():
    from itertools import combinations

    lengths = [30, 200, 31, 120, 29, 210, 118, 33]
    cost = lambda buckets, c: sum(len(b) * max(lengths[i] for i in b) + c for b in buckets)  # noqa: E731
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for call_tokens in (0, 50, 400, 10**6):
        buckets = prefill_buckets(lengths, call_tokens)
        assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
        splits = [[order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))]
                  for k in range(len(order)) for cuts in combinations(range(1, len(order)), k)]
        assert cost(buckets, call_tokens) == min(cost(s, call_tokens) for s in splits)
    assert len(prefill_buckets(lengths, 10**6)) == 1
    assert len(prefill_buckets(lengths, 0)) == len(set(lengths))


def test_matmul_decode_attention_matches_sdpa():
    import torch.nn.functional as F

    torch.manual_seed(0)
    query, key, value = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[1, ..., :5] = mask[3, ..., :2] = False  # left padding
    module = torch.nn.Module().eval()
    out, _ = sdpa_matmul_decode(module, query, key, value, mask)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    assert out.shape == (4, 1, 6, 8) and torch.allclose(out, expected, atol=1e-5)
