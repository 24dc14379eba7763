"""Beam-search-aware negatives (OTM: Zhuo et al., ICML 2020): train on the nodes beam search sees.

TDM's layer-wise sampler draws each level's negatives uniformly from the whole level. Beam
search never compares the positive with such a node: it compares it with the children of the
nodes it kept one level up, nodes the model already scores highly. A model trained only
against uniform nodes ranks those well enough on average and still loses the positive among
them, which is why our beam finds only part of the same model's brute-force top-M. OTM shows
that training on the beam's own candidates, labelled by the max-heap pseudo-targets (for one
target item: 1 exactly on its ancestors), is what makes a model optimal *under* beam search.

Here, before each epoch, the current model runs the service's beam search (`service.core.beam`,
the one the evaluator and production use) for every training sample with beam
`BeamAwareConfig.beam`, and a uniform draw from each level's scored candidates, minus the
nodes above any item of the sample's user (OTM's pseudo-target is 1 there), becomes that
sample's beam negatives for the epoch: `share` of the level's
negatives come from them, the rest stay uniform over the level.

Deviations from OTM, both deliberate: the positive ancestor is trained at every level even when
the beam lost it (OTM trains only the candidates, so a lost positive gets no signal exactly
where it needs one), and part of the negatives stay uniform, which keeps the scores calibrated
against the whole level (the tree step scores every node, not just the beam's). Candidates are
refreshed per epoch, not per step, so within an epoch they come from a model up to one epoch
old: mining every step would cost a beam search per training sample per step.

Opt-in, because it loses recall on every data set measured
(docs/experiments/beam-aware-negatives.md): with one interaction per training instance, the
beam's best nodes that hold none of the user's items are mostly items the user has not
reached yet, false negatives, worst deep in the tree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.beam import ScoreFn, beam_search, start_level
from service.core.topk import gather
from service.core.tree import Tree
from trainer.data.split import SampleSet
from trainer.evaluate.recommend import torch_index
from trainer.fit.sampler import BeamAwareConfig, LayerwiseSampler
from trainer.model.scorer import TreeScorer

log = logging.getLogger(__name__)


class RecordingScore:
    """A `ScoreFn` that passes through and keeps, per level, the candidate rows it was asked
    to score (-1 where there was no candidate): the beam's candidate set C_l."""

    def __init__(self, score) -> None:
        self.score = score
        self.candidates: dict[int, np.ndarray] = {}

    def __call__(self, level: int, node_ids: np.ndarray) -> np.ndarray:
        self.candidates[level] = np.array(node_ids, dtype=np.int64, copy=True)
        return self.score(level, node_ids)


def draw_usable(candidates: np.ndarray, usable: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(U, count) rows drawn uniformly, with replacement, from each row's `usable` candidates;
    -1 for a row that has none."""
    available = usable.sum(axis=1)
    first = np.argsort(~usable, axis=1, kind="stable")  # usable columns first, in order
    pick = (rng.random((len(candidates), count)) * np.maximum(available, 1)[:, None]).astype(np.int64)
    drawn = gather(candidates, gather(first, pick))
    return np.where(available[:, None] > 0, drawn, -1)


def holds_positive(tree: Tree, level: int, candidates: np.ndarray, owner: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(U, C) bool: candidate node (row) at `level` is an ancestor of one of its sample's
    positive items, given as pairs (owner: the sample's row in `candidates`, item)."""
    width = np.int64(tree.n_rows + 1)
    held = np.unique(owner * width + tree.node_ids(level, tree.ancestors(items, level)))
    keys = np.arange(len(candidates), dtype=np.int64)[:, None] * width + candidates
    found = np.minimum(np.searchsorted(held, keys), len(held) - 1)
    return (held[found] == keys) & (candidates >= 0)


def mine_beam_negatives(score_for: Callable[[np.ndarray], ScoreFn], tree: Tree,
                        positives_for: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n_samples: int,
                        counts: dict[int, int], beam: int, rng: np.random.Generator,
                        batch: int = 512) -> dict[int, np.ndarray]:
    """Per level with count > 0 that the beam search scores: (n_samples, count) int64 rows of
    nodes the search compared at that level for the sample and that hold none of its positive
    items (-1: none left). `score_for(index)` scores for the samples `index` (their
    histories); `positives_for(index)` gives their positive items as (position in index, item)
    pairs: OTM's pseudo-target of a node is 1 when any of them lies below it, so such a node is
    never a negative. Levels above the search's start are kept whole by the search: no entry
    there, so their negatives stay uniform, which is what the search sees there anyway."""
    scored = _scored_levels(tree, beam)
    wanted = {level: c for level, c in counts.items() if c > 0 and level in scored}
    mined = {level: np.full((n_samples, c), -1, dtype=np.int64) for level, c in wanted.items()}
    for start in range(0, n_samples, batch):
        index = np.arange(start, min(start + batch, n_samples))
        recorder = RecordingScore(score_for(index))
        beam_search(tree, recorder, len(index), min(beam, tree.n_items), beam)
        owner, items = positives_for(index)
        for level, candidates in recorder.candidates.items():
            if level in wanted:
                usable = (candidates >= 0) & ~holds_positive(tree, level, candidates, owner, items)
                mined[level][index] = draw_usable(candidates, usable, wanted[level], rng)
    return mined


def user_items(samples: SampleSet) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`positives_for` of training samples: every item of the sample's user (its rows run from
    `first` to the user's last sample). With one target per sample the beam's best candidates
    are mostly the user's *other* items; as negatives they would teach the model to rank
    what the user consumes low (measured on MovieLens: validation recall fell epoch by epoch)."""
    firsts, owner_of = np.unique(samples.first, return_inverse=True)
    last = np.zeros(len(firsts), dtype=np.int64)
    np.maximum.at(last, owner_of, samples.rows.astype(np.int64))
    last_row = last[owner_of]  # per sample: its user's last row

    def positives_for(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = samples.first[index].astype(np.int64)
        lengths = last_row[index] - first + 1
        owner = np.repeat(np.arange(len(index)), lengths)
        rows = np.repeat(first - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
        return owner, samples.items[rows].astype(np.int64)

    return positives_for


def _scored_levels(tree: Tree, beam: int) -> range:
    return range(start_level(tree, beam), tree.depth + 1)


@dataclass(frozen=True)
class BeamAwareSampler(LayerwiseSampler):
    """Layer-wise samples whose negatives are partly the beam's candidates (`refresh` mines
    them for every training sample; `sample` then needs the samples' indices)."""

    config: BeamAwareConfig = field(default_factory=BeamAwareConfig)
    mined: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def wrap(cls, base: LayerwiseSampler, config: BeamAwareConfig) -> BeamAwareSampler:
        return cls(tree=base.tree, negatives=base.negatives, levels=base.levels, config=config)

    def beam_counts(self) -> dict[int, int]:
        """Negatives per level that come from the beam's candidates (0 at levels whose nodes
        hold fewer than `min_node_items` items on average)."""
        def coarse(level: int) -> bool:
            return self.tree.n_items >= self.config.min_node_items * len(self.tree.nonempty_positions(level))

        return {level: int(round(self.config.share * int(self.negatives[level]))) if coarse(level) else 0
                for level in self.levels}

    def refresh(self, model: TreeScorer, samples: SampleSet, rng: np.random.Generator) -> None:
        """Mine every sample's beam negatives with `model` as it is now."""
        was_training = model.training
        model.eval()
        started = time.perf_counter()

        served = torch_index(model, self.tree)

        def score_for(index: np.ndarray) -> ScoreFn:
            # The evaluator's scorer (user state once per level, then every candidate in one
            # batched product), not the training kernel's pair scorer, which pools the user
            # state again for every level's call.
            return served.score_fn(samples.histories(index))

        mined = mine_beam_negatives(score_for, self.tree, user_items(samples), len(samples), self.beam_counts(),
                                    self.config.beam, rng)
        self.mined.clear()
        self.mined.update(mined)
        model.train(was_training)
        log.info("beam-aware negatives: %d samples mined with beam %d in %.1f s", len(samples), self.config.beam,
                 time.perf_counter() - started)

    def sample(self, targets: np.ndarray, rng: np.random.Generator, index: np.ndarray | None = None) -> np.ndarray:
        nodes = super().sample(targets, rng)
        if index is None or not self.mined:
            return nodes
        for level, span in self.level_slices().items():
            table = self.mined.get(level)
            if table is None:
                continue
            columns = slice(span.start + 1, span.start + 1 + table.shape[1])
            beam_rows = table[index]
            nodes[:, columns] = np.where(beam_rows >= 0, beam_rows, nodes[:, columns])
        return nodes
