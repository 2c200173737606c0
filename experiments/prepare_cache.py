"""Fill the r3v cache before a first run: the converted default model and the Chromium wrapper.

`python experiments/prepare_cache.py [overrides...]` (the same overrides as run.py, e.g. model.image_size=...)
builds what the first run would otherwise build: the Docker image runs it at build time, so containers start
with a warm cache. The cache is `$R3V_CACHE`, else `$XDG_CACHE_HOME/r3v`, else `~/.cache/r3v`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agent.models import offline_model_dir  # noqa: E402
from agent.offline_models import build_smolvlm_offline  # noqa: E402
from envs.browser import chrome_paths, chrome_wrapper  # noqa: E402


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=smolvlm_offline", *overrides])
    model = cfg.model
    path = build_smolvlm_offline(offline_model_dir(model), OmegaConf.to_container(model.vision), model.image_size,
                                 model.scale_factor)
    print(f"default model: {path}")
    print(f"chromium wrapper: {chrome_wrapper(chrome_paths()[0])}")


if __name__ == "__main__":
    main(sys.argv[1:])
