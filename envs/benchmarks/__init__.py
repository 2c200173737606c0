"""Loaders of the five static benchmarks (GeoQA, TabMWP, ChartQA, CLEVR-Math, M3CoT) from the layouts they
are distributed in, producing `envs.qa.QAItem`s whose `image` is an ABSOLUTE path.

    items = load_items("chartqa", "/data/ChartQA", "test", image_cache_dir=Path("~/.cache/r3v/images"))

A missing or damaged dataset raises `DataError`, whose message names the expected layout, where the
benchmark is published and `env.path=DIR`; a bad row names its file and item id. Nothing is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from envs.benchmarks import chartqa, clevr_math, geoqa, m3cot, tabmwp
from envs.benchmarks.common import DataError, looks_like_hub_id, no_data
from envs.benchmarks.teacher import TeacherImport, import_teacher, match_teacher, read_teacher
from envs.qa import QAItem

__all__ = ["BENCHMARKS", "Benchmark", "DataError", "TeacherImport", "import_teacher", "load_items",
           "match_teacher", "read_teacher"]


@dataclass(frozen=True)
class Benchmark:
    name: str
    loader: Callable[..., list[QAItem]]  # (path, split, image_cache_dir, **options) -> items
    layout: str  # the expected folder layout, as shown in DataError messages
    published: str  # where to download it (hub id / GitHub repository)
    splits: tuple[str, ...]  # default (train split, test split), as R3V used them
    hub: bool  # whether env.path may be a hub dataset id
    breakdown: tuple[str, ...]  # meta keys to report accuracy by


BENCHMARKS: dict[str, Benchmark] = {
    m.NAME: Benchmark(m.NAME, m.load, m.LAYOUT, m.PUBLISHED, m.SPLITS, hub, breakdown)
    for m, hub, breakdown in (
        (geoqa, False, ()),
        (tabmwp, False, ("ques_type", "ans_type")),
        (chartqa, False, ("source",)),
        (clevr_math, True, ("template",)),
        (m3cot, True, ("domain", "topic")),
    )
}


def load_items(name: str, path: str | Path, split: str, image_cache_dir: str | Path | None = None,
               **options: Any) -> list[QAItem]:
    """The items of one split of a benchmark read from `path` (its folder, or for CLEVR-Math and M3CoT a
    hub dataset id). `image_cache_dir` receives images embedded as bytes (parquet exports); `options` go to
    the loader (chartqa: augmented=True; clevr_math: config="multihop")."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    cache = Path(image_cache_dir).expanduser() if image_cache_dir is not None else None
    if Path(path).expanduser().is_dir():
        return bench.loader(Path(path).expanduser(), split, cache, **options)
    if not (bench.hub and looks_like_hub_id(str(path))):
        raise no_data(name, bench.layout, bench.published, path, "no such folder")
    try:  # only reachable online (or with a filled Hugging Face cache)
        return bench.loader(str(path), split, cache, **options)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types: no network, no such dataset, a loading script
        raise no_data(name, bench.layout, bench.published, path,
                      f"not a folder, and reading it as a hub dataset failed ({type(e).__name__}: {e})") from e
