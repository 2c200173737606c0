"""Batched generation: N samples per prompt, greedy determinism, and the top-k/top-p sampler."""

from __future__ import annotations

import torch

from agent.policy import Policy, Sampling, TopKTopPSampler
from agent.prompts import cot_prompt, select_prompt
from envs.episode import Observation


def _prompts(clevr_dir, k: int):
    images = sorted((clevr_dir / "images").iterdir())[:k]
    return [cot_prompt(Observation(text=f"Subtract all cubes {i}.", images=[str(p)])) for i, p in enumerate(images)]


def test_n_samples_per_prompt_in_one_call(tiny, clevr_dir):
    model, processor = tiny
    policy = Policy(model, processor, batch_size=4, sampling=Sampling(max_new_tokens=6), seed=0, progress=False)
    prompts = _prompts(clevr_dir, 3)
    out = policy.generate(prompts, n=[1, 3, 5])
    assert [len(o) for o in out] == [1, 3, 5]
    assert all(isinstance(t, str) for o in out for t in o)
    assert len(set(out[2])) > 1  # sampling gives different completions of the same prompt


def test_greedy_is_deterministic_and_independent_of_batching(tiny, clevr_dir):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 3)
    a = Policy(model, processor, batch_size=1, sampling=Sampling(max_new_tokens=8), progress=False)
    b = Policy(model, processor, batch_size=8, sampling=Sampling(max_new_tokens=8), progress=False)
    assert a.generate(prompts, n=2, greedy=True) == b.generate(prompts, n=2, greedy=True)
    out = a.generate(prompts, n=2, greedy=True)
    assert all(o[0] == o[1] for o in out)


def test_sampling_is_reproducible_from_the_seed(tiny, clevr_dir):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 2)
    runs = [Policy(model, processor, batch_size=4, sampling=Sampling(max_new_tokens=6), seed=s, progress=False)
            .generate(prompts, n=3) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_sampler_keeps_only_top_k_and_top_p():
    gen = torch.Generator().manual_seed(0)
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [0.0] * 6]) + 1e-12).repeat(2000, 1)
    picks = TopKTopPSampler(Sampling(temperature=1.0, top_k=3, top_p=1.0), gen)(None, scores).argmax(-1)
    freq = torch.bincount(picks, minlength=10).float() / len(picks)
    assert set(picks.tolist()) == {0, 1, 2}  # token 3 is outside the top 3
    assert abs(freq[0] - 0.5 / 0.95) < 0.05 and abs(freq[2] - 0.15 / 0.95) < 0.04
    picks = TopKTopPSampler(Sampling(temperature=1.0, top_k=50, top_p=0.7), gen)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7: the rest are cut
    picks = TopKTopPSampler(Sampling(temperature=1e-6, top_k=50, top_p=0.95), gen)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {0}  # temperature -> 0 is greedy


def test_completions_of_one_prompt_share_its_prefill_without_changing_them(tiny, clevr_dir):
    model, processor = tiny
    prompts = _prompts(clevr_dir, 3)

    def policy() -> Policy:
        return Policy(model, processor, batch_size=8, sampling=Sampling(max_new_tokens=8), seed=3, progress=False)

    # the same seed draws the same tokens whether a prompt's copies are prefilled once (shared) or each alone
    shared = policy().generate(prompts, n=[2, 1, 3])
    alone = [t for (t,) in policy().generate([prompts[0]] * 2 + [prompts[1]] + [prompts[2]] * 3, n=1)]
    assert shared == [alone[0:2], alone[2:3], alone[3:6]]
    assert len(set(shared[2])) > 1 and all(shared[2])  # the copies sampled their own (non-empty) completions
    one_token = policy().generate(prompts, n=[2, 1, 3], max_new_tokens=1)  # the prefill's own token, no second call
    alone = [t for (t,) in policy().generate([prompts[0]] * 2 + [prompts[1]] + [prompts[2]] * 3, n=1,
                                             max_new_tokens=1)]
    assert one_token == [alone[0:2], alone[2:3], alone[3:6]]


def test_self_select_asks_the_model_only_where_candidates_disagree(tiny, clevr_dir):
    from reflection.rollout import self_select

    model, processor = tiny
    policy = Policy(model, processor, batch_size=4, sampling=Sampling(max_new_tokens=6), progress=False)
    asked = []
    generate = policy.generate
    policy.generate = lambda prompts, **kw: asked.append(len(prompts)) or generate(prompts, **kw)
    obs = [p[0]["content"][0] for p in _prompts(clevr_dir, 3)]
    observations = [Observation(text=f"question {i}", images=[o["path"]]) for i, o in enumerate(obs)]
    candidates = [["a\nAnswer: 3", "b\nAnswer: 3"], ["c\nAnswer: 3", "d\nAnswer: 4"], ["e", "f"]]
    parsed = [["3", "3"], ["3", "4"], [None, None]]  # agree; disagree; nothing parsed: the model decides
    out = self_select(policy, observations, candidates, parsed, max_new_tokens=5, desc="select", progress=False)
    assert asked == [2] and out[0] == "a\nAnswer: 3"
    assert out[1] not in candidates[1] and out[2] not in candidates[2]  # the random model's own text
    expected = generate([select_prompt(observations[i], candidates[i]) for i in (1, 2)], n=1, greedy=True,
                        max_new_tokens=5)
    assert out[1:] == [texts[0] for texts in expected]


def test_output_head_reads_contiguous_hidden_states(tiny, clevr_dir):
    """The prefill's last-position slice reaches the head contiguous (else CPU linear() copies the weight per row)."""
    model, processor = tiny
    policy = Policy(model, processor, batch_size=4, sampling=Sampling(max_new_tokens=3), progress=False)
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[0], args[0].is_contiguous())))
    try:
        policy.generate(_prompts(clevr_dir, 3), n=1, greedy=True)
    finally:
        hook.remove()
    assert seen and seen[0][0] == 3 and all(ok for _, ok in seen)


def test_prefill_buckets_are_the_cheapest_split():
    from itertools import combinations

    from agent.policy import prefill_buckets

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


def test_length_buckets_and_matmul_decode_leave_completions_unchanged(tiny, clevr_dir):
    """Prompts of very different lengths, prefilled in buckets and decoded with the matmul kernel, complete
    exactly as in one padded batch decoded with sdpa (fp32), greedy and sampled from the same seed."""
    model, processor = tiny
    images = sorted((clevr_dir / "images").iterdir())[:3]
    prompts = [cot_prompt(Observation(text="Count the cubes. " * (30 if i % 2 else 1) + f"Question {i}.",
                                      images=[str(images[i // 2])])) for i in range(6)]  # short, long, short, ...
    calls = []
    generate = model.generate
    model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or generate(**kw)
    try:
        outs = []
        for call_tokens, attention in ((0, "matmul"), (10**6, "sdpa")):
            calls.clear()
            policy = Policy(model, processor, batch_size=16, sampling=Sampling(max_new_tokens=8), seed=5,
                            progress=False, prefill_call_tokens=call_tokens, decode_attention=attention)
            outs.append((policy.generate(prompts, n=1, greedy=True), policy.generate(prompts, n=[2, 1, 1, 3, 1, 2])))
            outs[-1] += (list(calls),)
    finally:
        model.generate = generate
        Policy(model, processor)  # back to the default attention for the other tests
    (greedy_b, sampled_b, calls_b), (greedy_1, sampled_1, calls_1) = outs
    assert calls_b[:2] == [3, 3] and calls_1[:1] == [6]  # two length buckets, against one padded batch
    assert greedy_b == greedy_1 and sampled_b == sampled_1
    assert len(set(sampled_b[3])) > 1


def test_matmul_decode_attention_matches_sdpa():
    import torch.nn.functional as F

    from agent.policy import sdpa_matmul_decode

    torch.manual_seed(0)
    query, key, value = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[1, ..., :5] = mask[3, ..., :2] = False  # left padding
    module = torch.nn.Module().eval()
    out, _ = sdpa_matmul_decode(module, query, key, value, mask)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    assert out.shape == (4, 1, 6, 8) and torch.allclose(out, expected, atol=1e-5)
