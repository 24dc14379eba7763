"""Offline side of JTM/TDM: data, baselines, models, tree learning, evaluation, export."""
