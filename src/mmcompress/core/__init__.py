"""Core plumbing shared by every technique: configs, targets, registry, records, I/O, batches."""
