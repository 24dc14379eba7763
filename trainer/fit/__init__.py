"""Fitting the scorer on a tree: negative samplers, batches, one step, the epochs loop, beam mining."""
