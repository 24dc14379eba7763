"""Name -> method registry: the names `compare --methods` and `train --method` accept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from trainer.errors import DataError
from trainer.recommender import Recommender


@dataclass(frozen=True)
class MethodOptions:
    """Command-line overrides that apply to every neural method (None = the method's default)."""

    epochs: int | None = None
    device: str = "cpu"


def _popularity(options: MethodOptions) -> Recommender:
    from trainer.baselines.popularity import Popularity

    return Popularity()


def _itemcf(options: MethodOptions) -> Recommender:
    from trainer.baselines.itemcf import ItemCF

    return ItemCF()


def _youtube(options: MethodOptions) -> Recommender:
    from trainer.baselines.youtube_dnn import YouTubeConfig, YouTubeDNN

    config = YouTubeConfig()
    if options.epochs is not None:
        config = replace(config, epochs=options.epochs)
    return YouTubeDNN(config)


METHODS: dict[str, Callable[[MethodOptions], Recommender]] = {
    "pop": _popularity,
    "itemcf": _itemcf,
    "youtube": _youtube,
}


def parse_methods(spec: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise DataError(f"unknown method(s) {unknown or spec!r}; choose from {', '.join(METHODS)}")
    return names


def build_method(name: str, options: MethodOptions) -> Recommender:
    return METHODS[name](options)
