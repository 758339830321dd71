"""Training: tasks (loss + evaluation per model kind) and one loop with AMP and torch.distributed."""
