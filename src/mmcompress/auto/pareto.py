"""Pareto frontier of evaluated plans (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point, maximize: Sequence[bool]) -> bool:
    """True when `a` is at least as good as `b` in every objective and better in one.

    Example:
        >>> dominates((1.0, 0.9), (2.0, 0.9), maximize=(False, True))   # smaller, same accuracy
        True
    """
    if not (len(a) == len(b) == len(maximize)):
        raise ValueError(f"points and senses differ in length: {len(a)}, {len(b)}, {len(maximize)}")
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        better = better or x != y
    return better


def pareto_front(points: Sequence[Point], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points, in input order (duplicates all stay).

    Example:
        >>> pareto_front([(10, 0.90), (5, 0.88), (6, 0.87), (20, 0.91)], maximize=(False, True))
        [0, 1, 3]
    """
    return [
        i for i, p in enumerate(points) if not any(dominates(q, p, maximize) for j, q in enumerate(points) if j != i)
    ]
