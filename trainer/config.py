"""What a scorer-based method is (DNN, TDM, the JTM variants): frozen configurations.

`DeepConfig` names everything that decides what a method learns (the scorer, the training
schedule, the tree it starts from, the negatives, the beam and the joint loop), so that one
value describes a run: it is saved with the model and compared when a joint method continues
from a fixed-tree one. The command line maps its flags onto these (`trainer.methods`).

| method      | tree                        | user features | retrieval   |
|-------------|-----------------------------|---------------|-------------|
| dnn         | none (leaf samples only)    | plain         | brute force |
| tdm         | fixed initial tree          | plain         | beam search |
| jtm-h       | fixed initial tree          | hierarchical  | beam search |
| jtm-j       | learnt (Algorithm 1 + 2)    | plain         | beam search |
| jtm         | learnt (Algorithm 1 + 2)    | hierarchical  | beam search |
| jtm-cluster | TDM's k-means re-clustering | hierarchical  | beam search |

(`jtm-cluster` is the comparison curve of the paper's Figure 2.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainer.fit.sampler import DEFAULT_LEAF_NEGATIVES
from trainer.fit.step import TrainConfig
from trainer.model.scorer import ScorerConfig
from trainer.tree.learning import TreeLearningConfig

TREE_LEARNERS = ("none", "jtm", "kmeans")

METHOD_VARIANTS: dict[str, dict] = {
    "dnn": {"hierarchical": False, "tree_learning": "none"},
    "tdm": {"hierarchical": False, "tree_learning": "none"},
    "jtm-h": {"hierarchical": True, "tree_learning": "none"},
    "jtm-j": {"hierarchical": False, "tree_learning": "jtm"},
    "jtm": {"hierarchical": True, "tree_learning": "jtm"},
    "jtm-cluster": {"hierarchical": True, "tree_learning": "kmeans"},
}


@dataclass(frozen=True)
class JointConfig:
    """Algorithm 1's loop: how many tree steps, and how each is followed."""

    tree_learning: str = "jtm"  # jtm (Algorithm 2) or kmeans (TDM's re-clustering)
    iterations: int = 3  # T
    retrain_epochs: int = 2  # per iteration, warm-started (validation still picks the epoch)
    internal_init: str = "keep"  # after a new tree: keep node rows, or "mean" of their items' rows
    # Retrain even when a tree step moved no item (the paper's loop, literally). Off: such an
    # iteration costs only its tree step (the model is already trained on that tree).
    retrain_unchanged: bool = False
    loss_samples: int = 20_000  # fixed subset on which L(theta, pi) is reported
    learning: TreeLearningConfig = field(default_factory=TreeLearningConfig)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> JointConfig:
        # Runs written before `retrain_unchanged` existed always retrained.
        return cls(**{"retrain_unchanged": True, **data, "learning": TreeLearningConfig(**data["learning"])})


@dataclass(frozen=True)
class BeamAwareConfig:
    """Beam-search-aware negatives (`trainer.fit.beam_mining`): before each epoch the model's own
    beam search (width `beam`) runs for every training sample, and `share` of each level's
    negatives are drawn from the nodes it compared there."""

    share: float = 0.5
    beam: int = 32
    # Mine only at levels whose nodes hold at least this many items on average (1: every level,
    # OTM literally). Deep nodes the user never touched are weak negatives: most of the beam's
    # best leaves are items the user would consume but has not (see trainer/fit/beam_mining.py).
    min_node_items: int = 1
    # Epochs of each fit trained on uniform negatives before mining starts (0: mine from the
    # first epoch). OTM's argument needs a model whose beam already means something: an
    # untrained model's beam candidates are arbitrary nodes, and mining them only adds noise.
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"beam-aware share must be in (0, 1], got {self.share}")
        if self.beam < 1:
            raise ValueError(f"beam-aware beam must be positive, got {self.beam}")
        if self.min_node_items < 1:
            raise ValueError(f"beam-aware min_node_items must be positive, got {self.min_node_items}")
        if self.warmup_epochs < 0:
            raise ValueError(f"beam-aware warmup_epochs must be >= 0, got {self.warmup_epochs}")


@dataclass(frozen=True)
class DeepConfig:
    method: str = "tdm"
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    arity: int = 2
    tree_init: str = "auto"  # category when the log has categories, else k-means on co-occurrence
    # Negatives at the leaf level (the schedule halves upward). 50 with lr 2e-3 matched or beat
    # the paper's 100 with lr 1e-3 in validation recall after every epoch (DNN, TDM, JTM-H on
    # MovieLens; JTM-H on Ciao) at 1.5-1.7x the samples/s: docs/PERFORMANCE.md, training.
    leaf_negatives: int = DEFAULT_LEAF_NEGATIVES
    beam: int | None = None  # None: the beam equals the number of results asked for
    tree_learning: str = "none"  # none, jtm (Algorithm 2) or kmeans (TDM re-clustering)
    joint: JointConfig = field(default_factory=JointConfig)
    beam_aware: BeamAwareConfig | None = None  # None: uniform layer-wise negatives (TDM, JTM)

    @property
    def uses_tree(self) -> bool:
        return self.method != "dnn"

    def search_beam(self, m: int) -> int | None:
        """The beam this method retrieves `m` items with: None (every item scored) without a tree."""
        return (self.beam or m) if self.uses_tree else None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DeepConfig:
        return cls(
            method=data["method"], scorer=ScorerConfig.from_json(data["scorer"]),
            train=TrainConfig(**data["train"]), arity=int(data["arity"]), tree_init=data["tree_init"],
            leaf_negatives=int(data["leaf_negatives"]), beam=data.get("beam"),
            tree_learning=data.get("tree_learning", "none"),
            joint=JointConfig.from_json(data["joint"]) if "joint" in data else JointConfig(),
            beam_aware=BeamAwareConfig(**data["beam_aware"]) if data.get("beam_aware") else None,
        )
