"""numpy-only core shared by the trainer (offline evaluation) and the service (online)."""
