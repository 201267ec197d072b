"""Checkpoint callbacks for training frameworks (`lightning`, `transformers`), thin adapters over mmlib.Checkpointer."""
