"""Read models: the in-memory directory, and SQL projections with checkpoints in the same transaction."""
