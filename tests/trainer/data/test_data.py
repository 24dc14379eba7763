"""Split, training samples and evaluation sets against direct (loop) computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainer.data.formats import RawLog
from trainer.data.interactions import build_interactions
from trainer.data.split import PAD, UserSplit, make_eval_set, make_samples, split_users
from trainer.errors import DataError


def tiny_interactions(n_users: int = 30, seed: int = 0, min_len: int = 3, max_len: int = 40):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for _ in range(int(rng.integers(min_len, max_len))):
            rows.append((f"u{u}", int(rng.integers(0, 50)), int(rng.integers(0, 4)), int(rng.integers(0, 10_000))))
    frame = pd.DataFrame(rows, columns=["user", "item", "category", "timestamp"])
    return frame, build_interactions(RawLog(frame=frame, format="generic", path=__import__("pathlib").Path("x")), 1)


def test_split_is_disjoint_complete_and_deterministic() -> None:
    a = split_users(1000, seed=3)
    b = split_users(1000, seed=3)
    c = split_users(1000, seed=4)
    for name in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.test, c.test)
    together = np.concatenate([a.train, a.valid, a.test])
    assert len(together) == len(np.unique(together)) == 1000
    assert len(a.test) == 100 and len(a.valid) == 100


def test_split_round_trips_through_file(tmp_path) -> None:
    _, data = tiny_interactions()
    split = split_users(data.n_users, seed=1, valid_fraction=0.2, test_fraction=0.2)
    split.save(tmp_path / "split.npz", data)
    loaded = UserSplit.load(tmp_path / "split.npz", data)
    for name in ("train", "valid", "test"):
        assert np.array_equal(getattr(split, name), getattr(loaded, name))
    assert loaded.seed == 1


def test_users_sorted_by_time_within_user() -> None:
    frame, data = tiny_interactions()
    for u in range(data.n_users):
        ts = data.timestamp[data.user_offsets[u]:data.user_offsets[u + 1]]
        assert (np.diff(ts) >= 0).all()
        original = frame[frame.user == data.user_ids[u]].sort_values("timestamp", kind="stable")
        assert list(data.item_ids[data.item[data.user_offsets[u]:data.user_offsets[u + 1]]]) == original.item.tolist()


@pytest.mark.parametrize("max_history", [1, 5, 69])
def test_samples_match_a_direct_loop(max_history: int) -> None:
    _, data = tiny_interactions()
    users = np.arange(0, data.n_users, 2)
    samples = make_samples(data, users, max_history=max_history)
    expected_targets, expected_histories = [], []
    for u in users:
        seq = data.item[data.user_offsets[u]:data.user_offsets[u + 1]]
        for t in range(1, len(seq)):
            expected_targets.append(seq[t])
            past = list(seq[max(0, t - max_history):t][::-1])
            expected_histories.append(past + [PAD] * (max_history - len(past)))
    assert np.array_equal(samples.targets, expected_targets)
    assert np.array_equal(samples.histories(), np.array(expected_histories))


@pytest.mark.parametrize("max_history", [1, 5, 69])
def test_samples_seeing_all_other_behaviours_match_a_direct_loop(max_history: int) -> None:
    """`history="others"`: each behaviour of a user with at least two is a sample, its features
    the user's other behaviours, most recent first; a batch's rows gather the same."""
    _, data = tiny_interactions(min_len=1, max_len=12)
    users = np.arange(0, data.n_users, 2)
    samples = make_samples(data, users, max_history=max_history, history="others")
    expected_targets, expected_histories = [], []
    for u in users:
        seq = list(data.item[data.user_offsets[u]:data.user_offsets[u + 1]])
        if len(seq) < 2:
            continue
        for t in range(len(seq)):
            others = (seq[:t] + seq[t + 1:])[::-1][:max_history]
            expected_targets.append(seq[t])
            expected_histories.append(others + [PAD] * (max_history - len(others)))
    assert np.array_equal(samples.targets, expected_targets)
    assert np.array_equal(samples.histories(), np.array(expected_histories))
    index = np.array([5, 0, len(samples) - 1, 5])
    assert np.array_equal(samples.histories(index), np.array(expected_histories)[index])
    with pytest.raises(DataError, match="sample history"):
        make_samples(data, users, history="random")


def test_shuffled_samples_draw_a_new_order_of_each_users_behaviours() -> None:
    """`history="shuffled"`: before the first reshuffle the paper's samples; after it, every
    user's behaviours in a drawn order (the same multiset), features the ones before in it."""
    _, data = tiny_interactions(min_len=2, max_len=15)
    users = np.arange(1, data.n_users, 2)
    before = make_samples(data, users, max_history=5)
    samples = make_samples(data, users, max_history=5, history="shuffled")
    assert np.array_equal(samples.histories(), before.histories())
    original = data.item.copy()
    orders = []
    for seed in (3, 3, 4):
        samples.reshuffle(np.random.default_rng(seed))
        orders.append(samples.ordered_items.copy())
        expected_targets, expected_histories = [], []
        for u in users:
            start, end = data.user_offsets[u], data.user_offsets[u + 1]
            seq = list(samples.ordered_items[start:end])
            assert sorted(seq) == sorted(original[start:end])
            for t in range(1, len(seq)):
                past = seq[max(0, t - 5):t][::-1]
                expected_targets.append(seq[t])
                expected_histories.append(past + [PAD] * (5 - len(past)))
        assert np.array_equal(samples.targets, expected_targets)
        assert np.array_equal(samples.histories(), np.array(expected_histories))
    assert np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], orders[2])
    assert np.array_equal(data.item, original)  # the log itself is never reordered
    before.reshuffle(np.random.default_rng(0))  # the paper's samples have no order to draw
    assert np.array_equal(before.histories(), make_samples(data, users, max_history=5).histories())


def test_eval_set_halves() -> None:
    _, data = tiny_interactions()
    users = np.array([0, 3, 7])
    ev = make_eval_set(data, users)
    for i, u in enumerate(users):
        seq = data.item[data.user_offsets[u]:data.user_offsets[u + 1]]
        half = len(seq) // 2
        assert list(ev.feature_items[ev.feature_offsets[i]:ev.feature_offsets[i + 1]]) == list(seq[:half])
        assert list(ev.truth_items[ev.truth_offsets[i]:ev.truth_offsets[i + 1]]) == sorted(set(seq[half:].tolist()))
        last3 = ev.histories(3)[i]
        assert list(last3[last3 != PAD]) == list(seq[:half][::-1][:3])
    sub = ev.subset(np.array([2, 0]))
    assert np.array_equal(sub.users, users[[2, 0]])
    third_truth = ev.truth_items[ev.truth_offsets[2]:ev.truth_offsets[3]]
    assert np.array_equal(sub.truth_items[:sub.truth_offsets[1]], third_truth)


def test_time_order_is_stable_with_and_without_the_packed_key() -> None:
    from trainer.data.interactions import _user_time_order

    rng = np.random.default_rng(0)
    user = rng.integers(0, 50, 3000).astype(np.int32)
    timestamp = rng.integers(0, 20, 3000)  # many ties: file order must break them
    expected = np.lexsort((np.arange(3000), timestamp, user))
    assert np.array_equal(_user_time_order(user, timestamp), expected)
    huge = timestamp * 2**60 // 20  # a span that cannot be packed beside the user: lexsort path
    assert np.array_equal(_user_time_order(user, huge), np.lexsort((np.arange(3000), huge, user)))


def test_item_category_is_the_majority_then_the_first_seen() -> None:
    from trainer.data.interactions import _majority_category

    items = np.array([0, 0, 1, 1, 1, 2, 2, 3], dtype=np.int32)
    categories = np.array([4, 4, 2, 3, 3, 1, 0, 5], dtype=np.int32)
    # item 0: always 4; item 1: 3 twice beats 2; item 2: a tie goes to 1 (seen first); item 3: 5
    assert _majority_category(items, categories, 4, 6).tolist() == [4, 3, 1, 5]
    assert _majority_category(items[[0, 1, 7]], categories[[0, 1, 7]], 4, 6).tolist() == [4, 0, 0, 5]
