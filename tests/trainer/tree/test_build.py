"""The initial trees a tree method can start from, as `--tree-init` names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.data.formats import RawLog
from trainer.data.interactions import build_interactions
from trainer.errors import DataError
from trainer.tree.build import initial_tree


def _log(with_category: bool):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": np.repeat(np.arange(20), 5), "item": rng.integers(0, 40, size=100)})
    if with_category:
        frame["category"] = frame["item"] % 4
    return build_interactions(RawLog(frame=frame, format="generic", path=Path("tiny")), 1)


def _leaf_order(tree) -> np.ndarray:
    return tree.leaf_item[tree.leaf_item >= 0]


def test_id_order_puts_items_in_id_order_and_ignores_categories() -> None:
    data = _log(with_category=True)
    tree = initial_tree(data, np.arange(data.n_users), "id-order", seed=3, arity=2)
    assert np.array_equal(_leaf_order(tree), np.arange(data.n_items))


def test_category_random_keeps_categories_together_in_a_seeded_order() -> None:
    data = _log(with_category=True)
    users = np.arange(data.n_users)
    by_id = _leaf_order(initial_tree(data, users, "category", seed=3, arity=2))
    shuffled = _leaf_order(initial_tree(data, users, "category-random", seed=3, arity=2))
    assert (np.diff(data.item_category[shuffled]) != 0).sum() == data.n_categories - 1
    assert np.array_equal(data.item_category[shuffled], data.item_category[by_id])
    assert not np.array_equal(shuffled, by_id)


@pytest.mark.parametrize("init", ["category", "category-random"])
def test_category_trees_need_categories(init: str) -> None:
    data = _log(with_category=False)
    with pytest.raises(DataError, match="needs a log with categories"):
        initial_tree(data, np.arange(data.n_users), init, seed=0, arity=2)
