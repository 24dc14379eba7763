"""The tree: initial trees, tree learning (JTM's Algorithm 2) and its cost, log p(node | user) per pair."""
