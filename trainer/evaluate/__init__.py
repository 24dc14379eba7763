"""Evaluation under the paper's protocol: metrics, recommending through the shared index, compare."""
