"""Readers for interaction logs in the formats our users have: one function per format.

Every reader returns a `RawLog`: a DataFrame with the columns ``user``, ``item`` and, when the
file has them, ``category`` and ``timestamp``, holding the file's *original* ids. Turning those
into contiguous integer ids, filtering and sorting is `trainer.data.interactions`'s job, so that every format
goes through the same pipeline.

Supported formats (``--format``):

- ``generic``: CSV/TSV/Parquet with a header naming ``user_id,item_id[,category_id][,timestamp]``
  (common aliases accepted, extra columns ignored). Ids may be strings.
- ``ciao``: the Ciao ratings CSV (a generic CSV whose header is known).
- ``userbehavior``: Taobao UserBehavior, the JTM paper's data set: CSV without a header,
  ``user,item,category,behavior,timestamp``.
- ``movielens``: MovieLens 100K ``u.data`` (tab-separated, no header); the genres in the
  ``u.item`` beside it become the category.
- ``movielens-dat``: MovieLens 1M/10M ``ratings.dat`` (``::``-separated); genres from
  ``movies.dat`` beside it.

``.gz`` (and other compressions pandas infers) are read transparently.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import DataError

FORMATS = ("auto", "generic", "ciao", "userbehavior", "movielens", "movielens-dat")

USERBEHAVIOR_BEHAVIORS = ("pv", "buy", "cart", "fav")

# Header aliases for the generic format, first match wins (compared case-insensitively).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "userid", "user", "uid", "customer_id", "visitor_id", "visitorid"),
    "item": ("item_id", "itemid", "item", "iid", "product_id", "productid", "movie_id", "movieid"),
    "category": ("category_id", "categoryid", "category", "cat_id", "cate_id", "categories"),
    "timestamp": ("timestamp", "ts", "time", "unix_time", "event_time", "datetime", "date"),
}
CIAO_COLUMNS = ("user_id", "item_id", "category_id", "rating", "helpfulness", "timestamp")


@dataclass(frozen=True)
class RawLog:
    """Interactions as read from one file, before id mapping.

    frame: columns ``user``, ``item`` and optionally ``category`` (original ids) and
        ``timestamp`` (int64 seconds or any monotone integer). Row order is the file's order.
    """

    frame: pd.DataFrame
    format: str
    path: Path

    @property
    def has_timestamp(self) -> bool:
        return "timestamp" in self.frame.columns

    @property
    def has_category(self) -> bool:
        return "category" in self.frame.columns


def read_log(path: str | Path, fmt: str = "auto", behaviors: tuple[str, ...] | None = None) -> RawLog:
    """Read an interaction log; ``fmt='auto'`` detects the format from the name and first line."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", path)
    if path.is_dir():
        raise DataError("is a directory, expected an interaction log file", path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", path)
    if _is_empty(path):
        detail = "" if path.stat().st_size == 0 else " once decompressed" if path.name.endswith(".gz") else \
            " (nothing but blank lines)"
        raise DataError(f"the file is empty{detail}", path)
    if fmt == "auto":
        fmt = detect_format(path)
    reader = _READERS[fmt]
    frame = reader(path, behaviors) if fmt == "userbehavior" else reader(path)
    if len(frame) == 0:
        raise DataError("no interactions in file", path)
    return RawLog(frame=frame, format=fmt, path=path)


def detect_format(path: Path) -> str:
    """Guess the format from the file name and its first line; raise DataError if unsure."""
    name = _strip_compression(path.name).lower()
    if name.endswith((".parquet", ".pq")):
        return "generic"
    if name == "u.data":
        return "movielens"
    if name.endswith(".dat"):
        return "movielens-dat"
    first = _first_line(path)
    if "::" in first:
        return "movielens-dat"
    fields = [f.strip().strip('"').lower() for f in _split_header(first)]
    if tuple(fields[: len(CIAO_COLUMNS)]) == CIAO_COLUMNS:
        return "ciao"
    if _find_column(fields, "user") is not None and _find_column(fields, "item") is not None:
        return "generic"
    if len(fields) == 5 and fields[3] in USERBEHAVIOR_BEHAVIORS:
        return "userbehavior"
    if "\t" in first and len(fields) == 4 and all(f.isdigit() for f in fields):
        return "movielens"
    raise DataError(
        "cannot detect the format (no header naming user and item columns, and not a known "
        f"headerless layout); first line is {first[:80]!r}; pass --format",
        path,
    )


# --------------------------------------------------------------------------- readers


def read_generic(path: Path) -> pd.DataFrame:
    """CSV/TSV/Parquet with a header; see COLUMN_ALIASES for accepted column names."""
    name = _strip_compression(path.name).lower()
    if name.endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"not a readable Parquet file ({exc.__class__.__name__})", path) from exc
        mapping = _resolve_columns(path, columns)
        frame = pd.read_parquet(path, columns=list(mapping.values()))
    else:
        first = _first_line(path)
        sep = "\t" if first.count("\t") > first.count(",") else ","
        columns = [c.strip().strip('"') for c in _split_header(first, sep)]
        mapping = _resolve_columns(path, columns)
        try:
            frame = pd.read_csv(path, sep=sep, usecols=list(mapping.values()), low_memory=False)
        except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
            raise DataError(f"cannot parse as CSV: {one_line(exc)}", path) from exc
    # Renamed in place, not re-selected: each copy of a 100M-row frame costs 3 GB.
    frame.columns = [{v: k for k, v in mapping.items()}[c] for c in frame.columns]
    _drop_missing_ids(path, frame)
    if "timestamp" in frame.columns:
        frame["timestamp"] = _timestamps(path, frame["timestamp"], header_rows=1)
    return frame if isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 else frame.reset_index(drop=True)


def read_userbehavior(path: Path, behaviors: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Taobao UserBehavior: ``user,item,category,behavior,timestamp`` without a header."""
    names = ["user", "item", "category", "behavior", "timestamp"]
    frame = _read_headerless(path, sep=",", names=names, numeric=("user", "item", "category", "timestamp"))
    unknown = ~frame["behavior"].isin(USERBEHAVIOR_BEHAVIORS)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(
            f"line {row + 1}: behavior {frame['behavior'].iloc[row]!r} is not one of "
            f"{', '.join(USERBEHAVIOR_BEHAVIORS)}",
            path,
        )
    if behaviors is not None:
        bad = set(behaviors) - set(USERBEHAVIOR_BEHAVIORS)
        if bad:
            raise DataError(f"unknown behaviors {sorted(bad)}; choose from {USERBEHAVIOR_BEHAVIORS}")
        frame = frame[frame["behavior"].isin(behaviors)]
    return frame.drop(columns="behavior").reset_index(drop=True)


def read_movielens_100k(path: Path) -> pd.DataFrame:
    """``u.data`` (user, item, rating, unix time; tab-separated) plus genres from ``u.item``."""
    names = ["user", "item", "rating", "timestamp"]
    frame = _read_headerless(path, sep="\t", names=names, numeric=tuple(names))
    frame = frame.drop(columns="rating")
    genres = path.with_name("u.item")
    if genres.exists():
        frame["category"] = frame["item"].map(_movielens_100k_genres(genres)).fillna(-1).astype(np.int64)
    return frame[[c for c in ("user", "item", "category", "timestamp") if c in frame.columns]]


def read_movielens_dat(path: Path) -> pd.DataFrame:
    """``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) plus genres from ``movies.dat``."""
    # '::' as a one-character separator leaves empty columns between the fields; the C parser
    # is far faster than the regex one a two-character separator would need.
    names = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
    frame = _read_headerless(path, sep=":", names=names, numeric=("user", "item", "timestamp"))
    frame = frame[["user", "item", "timestamp"]]
    movies = path.with_name("movies.dat")
    if movies.exists():
        genres: dict[int, str] = {}
        with open(movies, encoding="latin-1") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("::")
                if len(parts) >= 3 and parts[0].strip().isdigit():
                    genres[int(parts[0])] = parts[-1].split("|")[0]
        frame["category"] = frame["item"].map(genres).fillna("(none)")
        frame = frame[["user", "item", "category", "timestamp"]]
    return frame


_READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "generic": read_generic,
    "ciao": read_generic,
    "userbehavior": read_userbehavior,
    "movielens": read_movielens_100k,
    "movielens-dat": read_movielens_dat,
}


# --------------------------------------------------------------------------- helpers


def _movielens_100k_genres(path: Path) -> dict[int, int]:
    """Map movie id -> its first genre flag's index (0 = 'unknown' when none is set).

    Movies carry several genres; TDM assigns a multi-category item to one of them. The first
    flag keeps the choice deterministic and independent of any seed.
    """
    items = pd.read_csv(path, sep="|", header=None, encoding="latin-1")
    flags = items.iloc[:, -19:].to_numpy()
    first = np.where(flags.any(axis=1), flags.argmax(axis=1), 0)
    return dict(zip(items.iloc[:, 0].astype(np.int64).tolist(), first.tolist(), strict=True))


def _read_headerless(path: Path, sep: str, names: list[str], numeric: tuple[str, ...]) -> pd.DataFrame:
    """Read a headerless file with int64 numeric columns.

    The fast path parses numbers directly (a 100M-row UserBehavior file); only when that fails
    is the file re-read as text to name the first offending line.
    """
    usecols = [n for n in names if not n.startswith("_")]
    # Text columns as categoricals: UserBehavior's 100M behaviour strings would take ~6 GB as
    # Python objects, 100 MB as codes.
    dtypes = {n: (np.int64 if n in numeric else "category") for n in usecols}
    try:
        return pd.read_csv(path, sep=sep, header=None, names=names, usecols=usecols, dtype=dtypes)
    except (ValueError, TypeError, OverflowError):
        pass  # a non-numeric value somewhere: find it below
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise DataError(f"cannot parse: {one_line(exc)}", path) from exc
    try:
        frame = pd.read_csv(path, sep=sep, header=None, names=names, usecols=usecols, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"cannot parse: {one_line(exc)}", path) from exc
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"line {row + 1}: column {column!r} must be a number, found {frame[column].iloc[row]!r}",
                path,
            )
        frame[column] = values.astype(np.int64)
    return frame


def _resolve_columns(path: Path, columns: list[str]) -> dict[str, str]:
    """Map our column names to the file's; user and item are required."""
    lowered = [c.lower() for c in columns]
    mapping: dict[str, str] = {}
    for ours in COLUMN_ALIASES:
        index = _find_column(lowered, ours)
        if index is not None:
            mapping[ours] = columns[index]
    for required in ("user", "item"):
        if required not in mapping:
            raise DataError(
                f"missing required column {required!r} (accepted names: "
                f"{', '.join(COLUMN_ALIASES[required])}); the header has {columns}",
                path,
            )
    return mapping


def _find_column(lowered: list[str], ours: str) -> int | None:
    for alias in COLUMN_ALIASES[ours]:
        if alias in lowered:
            return lowered.index(alias)
    return None


def _drop_missing_ids(path: Path, frame: pd.DataFrame) -> None:
    for column in ("user", "item"):
        missing = frame[column].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(f"line {row + 2}: empty {column} id", path)


def _timestamps(path: Path, column: pd.Series, header_rows: int) -> pd.Series:
    """Numeric timestamps as int64; date strings converted to unix seconds."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        if column.isna().any():
            row = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise DataError(f"line {row + 1 + header_rows}: empty timestamp", path)
        return column.astype(np.int64)
    numbers = pd.to_numeric(column, errors="coerce")
    if not numbers.isna().any():
        return numbers.astype(np.int64)
    dates = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
    bad = dates.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"line {row + 1 + header_rows}: timestamp {column.iloc[row]!r} is neither a number nor a date",
            path,
        )
    epoch = pd.Timestamp(0, tz="UTC")  # resolution-independent (pandas 3 may use us, not ns)
    return ((dates - epoch) // pd.Timedelta(seconds=1)).astype(np.int64)


def _is_empty(path: Path, probe: int = 1 << 16) -> bool:
    """No bytes at all, or (a text log, gzip included) nothing but blank lines. Each reader would
    fail on such a file with its own confusing message (no header, an undetectable format, a
    parser's EmptyDataError); this names the problem. Reads at most `probe` characters."""
    if path.stat().st_size == 0:
        return True
    if _strip_compression(path.name).lower().endswith((".parquet", ".pq")) or (
            path.name != _strip_compression(path.name) and not path.name.endswith(".gz")):
        return False  # binary, or compressed in a way this module does not open as text
    try:
        with open_text(path) as fh:
            head = fh.read(probe)
    except (OSError, EOFError):
        return False  # unreadable: the reader reports it
    return len(head) < probe and not head.strip()


def _first_line(path: Path) -> str:
    try:
        with open_text(path) as fh:
            return fh.readline().rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {one_line(exc)}", path) from exc


def open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _split_header(line: str, sep: str | None = None) -> list[str]:
    if sep is None:
        sep = "\t" if line.count("\t") > line.count(",") else ","
    return line.split(sep)


def _strip_compression(name: str) -> str:
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
