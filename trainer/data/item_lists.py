"""Reading what a catalogue update is given: item lists and recent events.

An item list is a CSV/TSV (``.gz`` ok) or Parquet file with a header naming the item column
(``item_id`` or an alias the log readers accept) and, for new items, optionally a category
column; a headerless one-column CSV is read as item ids. Every problem (unreadable file,
duplicate ids, ids the catalogue already has or does not have) is a `DataError`: one line
naming the file, exit code 2 from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from service.core.items import ItemCatalog
from trainer.data.formats import COLUMN_ALIASES, RawLog, _first_line, read_log
from trainer.errors import DataError

_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class ItemList:
    ids: np.ndarray  # (n,) the catalogue's key type: int64, or str
    categories: np.ndarray | None  # (n,) original category ids as strings/ints, None when not given


def read_item_list(path: str | Path, catalog: ItemCatalog, with_categories: bool) -> ItemList:
    """Item ids (and categories when `with_categories` and the file has them), converted to the
    catalogue's id type and checked for duplicates. Membership is the caller's check."""
    path = Path(path)
    frame = _read_table(path)
    columns = {c.strip().lower(): c for c in frame.columns}
    item_col = next((columns[a] for a in COLUMN_ALIASES["item"] if a in columns), None)
    if item_col is None:
        raise DataError(f"no item column (expected a header naming one of {', '.join(COLUMN_ALIASES['item'][:3])}, "
                        "or one headerless column of ids)", path)
    category_col = next((columns[a] for a in COLUMN_ALIASES["category"] if a in columns), None)
    raw = frame[item_col]
    if raw.isna().any():
        raise DataError(f"row {int(np.flatnonzero(raw.isna().to_numpy())[0]) + 2}: empty item id", path)
    ids = _as_catalogue_ids(path, raw, catalog)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"item {unique[counts > 1][0]} appears {counts[counts > 1][0]} times; each id once", path)
    categories = None
    if with_categories and category_col is not None:
        column = frame[category_col]
        categories = np.array([None if pd.isna(v) else _plain_category(v) for v in column], dtype=object)
    return ItemList(ids=ids, categories=categories)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("no such file", path)
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            frame = pd.read_parquet(path)
        elif name.endswith(_TEXT_SUFFIXES):
            first = _first_line(path)
            sep = "\t" if first.count("\t") > first.count(",") else ","
            frame = pd.read_csv(path, sep=sep, dtype=str, skip_blank_lines=True)
            if len(frame.columns) == 1 and frame.columns[0].strip().lower() not in COLUMN_ALIASES["item"]:
                frame = pd.read_csv(path, header=None, names=["item_id"], dtype=str)  # headerless ids
        else:
            raise DataError(f"unknown format {path.suffix or '(no suffix)'!r}: item lists are .csv, .tsv, .txt "
                            "(.gz ok) or .parquet", path)
    except pd.errors.EmptyDataError as exc:
        raise DataError("the file is empty", path) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"cannot read the item list ({' '.join(str(exc).split())[:160]})", path) from exc
    if len(frame) == 0:
        raise DataError("the file lists no items", path)
    return frame


def _as_catalogue_ids(path: Path, raw: pd.Series, catalog: ItemCatalog) -> np.ndarray:
    if not catalog.items.numeric:
        return raw.astype(str).str.strip().to_numpy(dtype=str)
    text = raw.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round())
    if bad.any():
        value = text[bad].iloc[0]
        raise DataError(f"item id {value!r} is not an integer, and the catalogue's ids are integers", path)
    return numbers.astype(np.int64).to_numpy()


def _plain_category(value: object) -> object:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Events:
    """Recent interactions, time-ordered within each user. item: the catalogue's key type."""

    user: np.ndarray  # (E,) int64 user codes
    item: np.ndarray  # (E,) item ids (catalogue key type)


def read_events(path: str | Path, fmt: str, numeric_ids: bool) -> Events:
    """Any log the trainer's readers read (`--format`), users' events in time order (file order
    when there is no timestamp). No minimum-length filter: one event is evidence for a new item."""
    raw = read_log(path, fmt)
    frame = raw.frame
    order = np.lexsort((frame["timestamp"].to_numpy(),) if raw.has_timestamp else (np.arange(len(frame)),))
    frame = frame.iloc[order]
    user = pd.factorize(frame["user"])[0].astype(np.int64)
    stable = np.argsort(user, kind="stable")  # users grouped, time order kept inside each user
    items = frame["item"].to_numpy()[stable]
    if numeric_ids:
        converted = pd.to_numeric(pd.Series(items), errors="coerce")
        known = converted.notna().to_numpy()
        items = np.where(known, converted.fillna(-1).astype(np.int64).to_numpy(), np.iinfo(np.int64).min)
    else:
        items = np.asarray(items).astype(str)
    return Events(user=user[stable], item=items)


def drop_items(raw: RawLog, source: Path) -> RawLog:
    """`raw` without the events of the items `source` names: an item list file, or an artifact
    directory (its retired items). This is how retired items leave at the next full training."""
    if (source / "manifest.json").is_file():
        from service.core.artifact import ArtifactError, read_artifact

        try:
            catalog = read_artifact(source).catalog
        except ArtifactError as exc:
            raise DataError(f"not a readable artifact: {exc}") from exc
        ids = catalog.items.ids[catalog.retired]
    else:
        ids = pd.read_csv(source, dtype=str).iloc[:, 0].str.strip().to_numpy() if source.is_file() else None
        if ids is None:
            raise DataError("no such item list or artifact directory", source)
    column = raw.frame["item"]
    keys = column.astype(str).to_numpy() if column.dtype.kind not in "iu" else column.to_numpy()
    wanted = np.asarray(ids).astype(str) if column.dtype.kind not in "iu" else pd.to_numeric(
        pd.Series(ids), errors="coerce").dropna().astype(np.int64).to_numpy()
    keep = ~np.isin(keys, wanted)
    return RawLog(frame=raw.frame[keep].reset_index(drop=True), format=raw.format, path=raw.path)
