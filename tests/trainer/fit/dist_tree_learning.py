"""Run under torchrun by test_distributed.py: learn a tree with the items spread over ranks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.trainer.tree.test_learning import tiny_problem  # noqa: E402
from trainer.fit import distributed  # noqa: E402
from trainer.tree.learning import TreeLearningConfig, learn_tree  # noqa: E402

ctx = distributed.init_from_env()
tree, model, samples = tiny_problem(60, seed=3)
new_tree, report = learn_tree(model, tree, samples, False, TreeLearningConfig(gap=3))
if ctx is None or ctx.is_main:
    new_tree.save(sys.argv[1])
    Path(sys.argv[1] + ".evaluations").write_text(str(report.evaluations))
distributed.shutdown()
