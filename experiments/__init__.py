"""Research probes: one-off investigations, each with its page under docs/experiments/."""
