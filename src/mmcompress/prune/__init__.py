"""Pruning: importance, masks, and the `prune` verb."""
