"""Data: log formats, interactions with contiguous ids, the user split, samples, prepared and synthetic logs."""
