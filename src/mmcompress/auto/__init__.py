"""Automatic compression: search per-modality plans under constraints, keep the Pareto frontier,
evaluate robustness, and explain the choice in a report."""
