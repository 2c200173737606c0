"""Generation speed on the real step prompts of a finished run, written as JSON.

    python experiments/bench_generation.py runs/miniwob-smolvlm_offline-r3v-seed0 --out bench_generation.json

Takes `--prompts` observations from the run's iteration-0 samples (spread over the file, so the batch mixes
tasks and steps, as a rollout step does) and times one greedy call and one sampled call (`sample.n`
completions per prompt) with the run's adapter, under these settings of `Policy` (agent/generation.py):
- hf generate: plain `model.generate` on one padded batch (`generation.engine=hf`, the reference)
- one padded batch, sdpa decode: the fast engine with every prompt padded to the longest, torch's attention
  kernel at every step
- length buckets, sdpa decode: prompts prefilled in length buckets (`generation.prefill_call_tokens`)
- length buckets, matmul decode: the default on a CPU (`generation.decode_attention=auto`)
`--settings` picks some of them by their number (0-3; default: all). Each figure is the median of `--repeats`
calls, after one warm-up call. End-of-sequence is ignored, so every setting decodes `max_new_tokens` tokens:
in bf16 the settings' completions differ slightly, and so would their lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from agent.models import load_for_inference  # noqa: E402
from agent.policy import Generation, Policy, Sampling  # noqa: E402
from agent.prompts import Prompts  # noqa: E402
from reflection.pool import load_trajectories, samples_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (its config.yaml, iter_0 samples, an adapter)")
    parser.add_argument("--iteration", type=int, default=1, help="whose adapter generates (iter_K/adapter)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call (env.num_envs in a rollout)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", type=int, nargs="*", default=[0, 1, 2, 3], help="which settings (0-3, above)")
    parser.add_argument("--out", type=Path, default=Path("bench_generation.json"))
    args = parser.parse_args()

    run_dir = args.run_dir.resolve()
    adapter = run_dir / f"iter_{args.iteration}" / "adapter"
    samples = samples_path(run_dir, 0)
    for path in (run_dir / "config.yaml", adapter, samples):
        if not path.exists():
            sys.exit(f"bench_generation: {path} does not exist; pass a run that finished iteration {args.iteration}")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    generation = OmegaConf.load(ROOT / "conf" / "config.yaml").generation  # today's defaults, not the run's
    model, processor = load_for_inference(cfg.model, adapter)
    model.generation_config.eos_token_id = None  # decode max_new_tokens tokens under every setting (see above)
    observations = [s.observation for t in load_trajectories(samples, run_dir) for s in t.steps]
    stride = max(1, len(observations) // args.prompts)
    prompt_set = Prompts(**(cfg.get("prompts") or OmegaConf.load(ROOT / "conf" / "prompts" / "default.yaml")))
    prompts = [prompt_set.cot_prompt(o) for o in observations[::stride][:args.prompts]]
    lengths = [len(processor.tokenizer(processor.apply_chat_template(p, add_generation_prompt=True))["input_ids"])
               for p in prompts]
    sampling = Sampling(cfg.sample.temperature, cfg.sample.top_p, cfg.sample.top_k, cfg.sample.max_new_tokens)
    buckets = generation.prefill_call_tokens
    settings = {
        "hf generate": dict(engine="hf"),
        "one padded batch, sdpa decode": dict(engine="fast", prefill_call_tokens=10**9, decode_attention="sdpa"),
        "length buckets, sdpa decode": dict(engine="fast", prefill_call_tokens=buckets, decode_attention="sdpa"),
        "length buckets, matmul decode": dict(engine="fast", prefill_call_tokens=buckets, decode_attention="matmul"),
    }
    results = {}
    for name, kwargs in [item for i, item in enumerate(settings.items()) if i in args.settings]:
        setting = Generation.from_config({**generation, **kwargs})
        policy = Policy(model, processor, setting, sampling, seed=cfg.seed, progress=False)
        policy.eos_token_id = None
        results[name] = {}
        for call, kw in (("greedy", dict(n=1, greedy=True)), (f"sampled n={cfg.sample.n}", dict(n=cfg.sample.n))):
            seconds = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                policy.generate(prompts, progress=False, **kw)
                seconds.append(time.perf_counter() - start)
            results[name][call] = {"median_s": round(statistics.median(seconds[1:]), 3),
                                   "all_s": [round(s, 3) for s in seconds[1:]]}
            print(f"{name:32s} {call:12s} {results[name][call]['median_s']:.2f} s", flush=True)
    report = {
        "run_dir": str(run_dir), "adapter": str(adapter), "prompts": len(prompts),
        "prompt_text_tokens": {"mean": round(statistics.mean(lengths), 1), "max": max(lengths)},
        "max_new_tokens": sampling.max_new_tokens, "dtype": str(next(model.parameters()).dtype),
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
