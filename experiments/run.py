"""The entry point: `python experiments/run.py env=synth_clevr model=smolvlm_offline method=r3v`.

Hydra composes conf/config.yaml with the env/, model/ and method/ groups; any key can be overridden on the
command line (`iterations=1 train.lr=1e-4 run_dir=runs/x`). Everything the run writes lives under run_dir.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/ modules

from accelerate.utils import broadcast_object_list  # noqa: E402

from envs.benchmarks import DataError  # noqa: E402
from envs.files import DiskFull, RunDirInUse, RunLock, atomic_write  # noqa: E402
from reflection.distributed import is_main  # noqa: E402
from reflection.loop import evaluate_only, selftrain  # noqa: E402
from validate_config import problems  # noqa: E402

log = logging.getLogger("r3v")


def check_config(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to mix two different configs in one run directory (resuming needs the same config). A run that
    stopped before finishing any stage (e.g. on missing data) leaves nothing to resume: its dir is reused."""
    saved = run_dir / "config.yaml"
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if saved.exists() and saved.read_text() != resolved and any(run_dir.glob("iter_*/*")):
        raise SystemExit(f"error: {run_dir} holds a run with a different config ({saved}). Resume with the same "
                         "overrides, or pick another run_dir=...")
    atomic_write(saved, resolved)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.mode not in ("selftrain", "eval"):
        raise SystemExit(f"error: unknown mode={cfg.mode!r}: use mode=selftrain or mode=eval")
    bad = problems(cfg)  # before any work: a bad value found hours in costs the hours
    if bad:
        raise SystemExit("error: invalid config:\n  " + "\n  ".join(bad))
    if cfg.mode == "eval" and cfg.adapter is not None and not Path(cfg.adapter).is_dir():
        raise SystemExit(f"error: adapter={cfg.adapter} is not a folder: pass a run's adapter "
                         "(run_dir/iter_K/adapter), or adapter=null for the base model")
    run_dir = Path(cfg.run_dir)
    if cfg.env.kind == "miniwob" and is_main():
        from envs.browser import reap_orphans

        reap_orphans()  # browsers of a killed run: now, even if this resume has no browser stage left to run
    lock, refused = None, None
    if is_main():  # under `accelerate launch` the main process owns the run directory for all of them
        try:
            lock = RunLock(run_dir)  # one live run per run directory: two would interleave their writes
            if lock.removed_temp_files:
                log.info("removed %d temporary file(s) of a write the last run did not finish", lock.removed_temp_files)
            check_config(cfg, run_dir)
        except (RunDirInUse, SystemExit) as e:
            refused = str(e).removeprefix("error: ")
    else:  # the log is the main process's
        for name in ("r3v", "reflection", "agent", "envs"):
            logging.getLogger(name).setLevel(logging.WARNING)
    (refused,) = broadcast_object_list([refused])
    if refused:
        raise SystemExit(f"error: {refused}")
    try:
        log.info("run_dir=%s env=%s model=%s method=%s mode=%s", run_dir, cfg.env.name, cfg.model.name,
                 cfg.method.name, cfg.mode)
        selftrain(cfg) if cfg.mode == "selftrain" else evaluate_only(cfg)
    except (FileNotFoundError, KeyError, ValueError, DataError, DiskFull) as e:
        # Bad input (a missing file, an unknown name): one clear line, not a traceback; what is written stays.
        log.error("%s", e)
        raise SystemExit(f"error: {e}") from e
    finally:
        if lock is not None:
            lock.release()
    log.info("done: metrics in %s", run_dir / "metrics.jsonl")


if __name__ == "__main__":
    # `kill` (SIGTERM) and a closed terminal (SIGHUP) exit like Ctrl-C does: finally-blocks and exit handlers
    # run, so every browser is ended and partial outputs stay as they were (the run resumes from them).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    main()
