"""A log read, filtered and indexed once, stored as plain arrays that later runs memory-map.

Reading a 100M-event log (the JTM paper's UserBehavior size) and turning it into contiguous,
time-ordered ids takes minutes and several GB of transient memory; every `train`, `compare`
and every torchrun rank would pay it again. `python -m trainer prepare --data LOG --out DIR`
does it once and writes `DIR/interactions.json` plus one `.npy` per array. `--data DIR`
then loads in well under a second: the arrays are memory-mapped read-only, so processes on
one machine (torchrun ranks) share a single copy in the page cache instead of holding one each.

The arrays are exactly `trainer.data.interactions.Interactions`' (int32 users and items, int64 times and
offsets); ids that were strings are stored as fixed-width unicode, never pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.errors import DataError

MANIFEST = "interactions.json"
FORMAT_VERSION = 1
_ARRAYS = ("user", "item", "timestamp", "user_offsets", "item_category", "user_ids", "item_ids", "category_ids")


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).exists()


def save_prepared(data, directory: Path, min_interactions: int, behaviors: tuple[str, ...] | None) -> None:
    """Write `data` (an `Interactions`) and the settings that produced it to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in _ARRAYS:
        array = np.asarray(getattr(data, name))
        if array.dtype == object:  # string ids from the log
            array = array.astype(str)
        np.save(directory / f"{name}.npy", array, allow_pickle=False)
    manifest = {
        "format_version": FORMAT_VERSION, "format": data.format, "source": data.source,
        "has_timestamp": data.has_timestamp, "has_category": data.has_category,
        "min_interactions": min_interactions, "behaviors": None if behaviors is None else list(behaviors),
        "interactions": len(data), "users": data.n_users, "items": data.n_items,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def load_prepared(directory: Path, min_interactions: int, behaviors: tuple[str, ...] | None,
                  mmap: bool = True) -> dict:
    """The fields of the `trainer.data.interactions.Interactions` stored in `directory`, its arrays
    memory-mapped (`load_interactions` builds the object: this module does not import it).
    Refuses settings other than the ones it was prepared with (they would need the raw log)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"not a readable prepared data set ({exc.__class__.__name__}: {exc})",
                        directory / MANIFEST) from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"prepared with format version {manifest.get('format_version')}, this code reads "
                        f"{FORMAT_VERSION}; run `trainer prepare` again", directory)
    if manifest["min_interactions"] != min_interactions:
        raise DataError(f"prepared with --min-interactions {manifest['min_interactions']}, asked for "
                        f"{min_interactions}; prepare again from the log", directory)
    if (manifest.get("behaviors") or None) != (None if behaviors is None else list(behaviors)):
        raise DataError(f"prepared with --behaviors {manifest.get('behaviors')}, asked for {behaviors}", directory)
    arrays = {}
    for name in _ARRAYS:
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path.name} ({exc.__class__.__name__}: {exc})", path) from exc
    expected = {"user": manifest["interactions"], "item": manifest["interactions"],
                "timestamp": manifest["interactions"], "user_offsets": manifest["users"] + 1,
                "item_category": manifest["items"], "user_ids": manifest["users"], "item_ids": manifest["items"]}
    for name, length in expected.items():
        if len(arrays[name]) != length:
            raise DataError(f"{name}.npy holds {len(arrays[name])} entries, the manifest says {length}", directory)
    extra = {"format": manifest["format"], "source": manifest["source"], "has_timestamp": manifest["has_timestamp"],
             "has_category": manifest["has_category"]}
    return {**arrays, **extra}
