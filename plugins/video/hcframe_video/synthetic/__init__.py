"""The synthetic human-action world: the embedded default dataset (no downloads)."""
