"""What every benchmark loader shares: the error type, JSON/parquet readers that name the bad file and item,
image checks, and the image cache for parquet exports that embed images as bytes.

A loader never skips a bad row: a missing image, an unreadable file or a row without an answer raises
`DataError` naming the file and the item, so a half-downloaded dataset cannot pass for a smaller one.
"""

from __future__ import annotations

import io
import json
import re
import textwrap
from pathlib import Path
from typing import Any, Iterator

from envs.files import atomic_write
from envs.qa import DataError, QAItem  # noqa: F401  (DataError: one error type for every dataset file)
from envs.scoring import normalize

VALIDATION = ("validation", "val", "dev")  # one split, three names across the benchmarks
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")




def no_data(name: str, layout: str, published: str, path: str | Path | None, detail: str) -> DataError:
    """The error for a benchmark that is not where `env.path` points (None: env.path is not set)."""
    where = f" (looked in {path})" if path is not None else ""
    return DataError(
        f"{name}: {detail}{where}.\nExpected layout:\n{textwrap.indent(layout.strip(), '  ')}\n"
        f"Published at: {published}.\nDownload it and set env.path=DIR to the folder shown above."
    )


def split_names(split: str) -> list[str]:
    """The names a split may go by on disk: "validation" is also "val" or "dev"."""
    return [split] + [s for s in VALIDATION if s != split] if split in VALIDATION else [split]


def read_json(file: Path) -> Any:
    """A whole JSON file; a truncated or invalid one raises DataError naming the file and position."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                        "the file is truncated or corrupt: download it again") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text ({e})") from e


def read_records(file: Path) -> list[dict]:
    """Rows of a file that is either one JSON array or JSON Lines (whatever its extension says)."""
    try:  # strict: replacing bad bytes would pass a corrupt file off as a readable one
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text (byte {e.start}: {e.reason}); the file is corrupt: download it "
                        "again") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{file}: invalid JSON on line {n} column {e.colno} ({e.msg}); the file is "
                                "truncated or corrupt: download it again") from e
        data = rows
    if isinstance(data, dict):  # JSON Lines with a single row
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{file}: expected a list of JSON objects")
    return data


def field(row: dict, key: str, file: Path | str, item_id: str) -> Any:
    """row[key], which must be present and non-empty."""
    if not isinstance(row, dict):
        raise DataError(f"{file}: item {item_id} is not a JSON object")
    value = row.get(key)
    if value is None or (isinstance(value, (str, list)) and not value):
        raise DataError(f"{file}: item {item_id} has no {key!r}")
    return value


def letter(answer: Any, n: int, file: Path | str, item_id: str) -> str:
    """A multiple-choice gold answer as a letter: "B", "(B)" or an index 1 -> "B"."""
    s = chr(ord("A") + answer) if isinstance(answer, int) and 0 <= answer < 26 else str(answer).strip("() .")
    if len(s) != 1 or not "A" <= s.upper() < chr(ord("A") + n):
        raise DataError(f"{file}: item {item_id} has answer {answer!r}, not one of its {n} option letters")
    return s.upper()


def image_file(path: Path, file: Path | str, item_id: str) -> str:
    """The absolute path of an item's image, which must exist."""
    if not path.is_file():
        raise DataError(f"{file}: image {path} of item {item_id} is missing; the download is incomplete")
    return str(path.resolve())


def check_items(items: list[QAItem], file: Path | str) -> list[QAItem]:
    """Ids must be unique and every gold answer readable by its scorer (else it could never be matched)."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"{file}: item id {item.id} occurs twice")
        seen.add(item.id)
        if normalize(item.answer, item.answer_type, item.choices) is None:
            raise DataError(f"{file}: item {item.id} has answer {item.answer!r}, which the {item.answer_type!r} "
                            "scorer cannot read")
    if not items:
        raise DataError(f"{file}: no items")
    return items


def _image_suffix(data: bytes) -> str:
    from PIL import Image

    try:
        fmt = Image.open(io.BytesIO(data)).format or "png"
    except Exception as e:  # PIL raises several types for bytes that are not an image
        raise ValueError(f"embedded bytes are not an image ({e})") from e
    return ".jpg" if fmt.lower() == "jpeg" else "." + fmt.lower()


def cached_image(cell: Any, root: Path, cache_dir: Path | None, name: str, file: str, item_id: str) -> str:
    """The absolute path of an image given as a parquet cell: {"bytes", "path"} or a path string. Embedded
    bytes are written once to `cache_dir/name<ext>` (atomically, so a crash never leaves half an image)."""
    if isinstance(cell, dict) and cell.get("bytes"):
        if cache_dir is None:
            raise DataError(f"{file}: images are embedded as bytes; pass an image cache folder to write them to")
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:  # an item id such as "science-1.5" is no file name: sniff the format
            stem, suffix = name, None
        try:
            target = cache_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + (suffix or _image_suffix(cell["bytes"])))
        except ValueError as e:
            raise DataError(f"{file}: item {item_id}: {e}") from e
        if not target.is_file():
            atomic_write(target, cell["bytes"])
        return str(target.resolve())
    path = cell.get("path") if isinstance(cell, dict) else cell
    if not path:
        raise DataError(f"{file}: item {item_id} has no image")
    candidates = [Path(path), root / path, root / "images" / Path(path).name]
    found = next((p for p in candidates if p.is_file()), candidates[1])
    return image_file(found, file, item_id)


def find_parquet(root: Path, split: str, config: str | None = None) -> list[Path]:
    """Parquet shards of a split in the layouts the hub uses: `data/test-00000-of-00001.parquet`,
    `<config>/test-*.parquet`, `<config>/test/0000.parquet` (refs/convert/parquet) or `test.parquet`."""
    names = split_names(split)
    found = []
    for f in sorted(root.rglob("*.parquet")):
        parts = [p.lower() for p in f.relative_to(root).parts]
        if any(n in parts[:-1] or re.split(r"[-_.]", parts[-1])[0] == n for n in names):
            found.append(f)
    if config and any(config in f.relative_to(root).parts[:-1] for f in found):
        found = [f for f in found if config in f.relative_to(root).parts[:-1]]
    return found


def _no_decode(ds: Any) -> Any:
    import datasets

    for column, feature in ds.features.items():  # keep images as {"bytes", "path"}: no decoding
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def parquet_rows(files: list[Path], cache_dir: Path | None) -> Iterator[dict]:
    """Rows of parquet files read with `datasets`, images left as {"bytes", "path"}."""
    import datasets

    hf_cache = str(cache_dir / ".hf_datasets") if cache_dir is not None else None
    try:
        ds = datasets.load_dataset("parquet", data_files={"rows": [str(f) for f in files]}, split="rows",
                                   cache_dir=hf_cache)
    except Exception as e:  # pyarrow and datasets raise many types for a damaged file
        raise DataError(f"{', '.join(map(str, files))}: unreadable parquet ({type(e).__name__}: {e}); the "
                        "download is incomplete or corrupt") from e
    return iter(_no_decode(ds))


def hub_rows(repo_id: str, split: str, config: str | None, cache_dir: Path | None) -> Iterator[dict]:
    """Rows of a split of a hub dataset (needs network access or a filled Hugging Face cache)."""
    import datasets

    hf_cache = str(cache_dir / ".hf_datasets") if cache_dir is not None else None
    splits = datasets.load_dataset(repo_id, config, cache_dir=hf_cache)
    name = next((n for n in split_names(split) if n in splits), None)
    if name is None:
        raise DataError(f"hub dataset {repo_id} has no split {split!r} (it has {sorted(splits)})")
    return iter(_no_decode(splits[name]))


def looks_like_hub_id(path: str) -> bool:
    """"owner/name" and not an existing path: read from the Hugging Face hub instead of a folder."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path)) and not Path(path).exists()
