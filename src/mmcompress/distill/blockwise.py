"""Repair a compressed model block by block: each block of the student learns the teacher block's
output from its own inputs (local feature distillation).

With a few hundred unlabeled samples, end-to-end distillation of a pruned CNN moves slowly: one
loss at the logits must steer every layer at once, and each step costs a full forward and
backward pass. Training each block alone on the teacher's block outputs gives every layer a direct
target and costs one block's forward and backward per step (BRECQ, Li et al. 2021, for
quantization; PRACTISE, Wang et al. 2023, for pruning with tiny data sets).

Blocks are trained in forward order. Block i sees the student's own inputs, i.e. the outputs of
the blocks before it after their repair, and learns the teacher block's output on the teacher's
inputs: later blocks also correct what earlier ones left. Per block:
- inputs of the student and of the teacher, and the teacher block's outputs, on every calibration
  sample are kept (the blocks must follow one another: block i + 1 reads block i's output);
- Adam on the block's parameters (BatchNorm running statistics frozen: the block runs in eval
  mode), cosine learning rate, squared error relative to the teacher outputs' mean square;
- the block's weights at its lowest held-out error (`held_out` of the samples, measured before
  training and every `validate_every` steps) are kept: no block ends worse than it started.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn

from mmcompress.core.batches import call_model, check_finite
from mmcompress.core.config import FrozenConfig
from mmcompress.errors import ConfigError, DataError

__all__ = ["BlockRepairConfig", "distill_blocks"]


class BlockRepairConfig(FrozenConfig):
    """Block-wise repair settings.

    Attributes:
        steps: optimizer steps per block.
        lr: Adam peak learning rate (cosine decay to 0 over `steps`).
        batch_size: samples per step.
        held_out: fraction of the calibration samples kept out of training to choose each block's
            best weights.
        validate_every: steps between held-out measurements.
        seed: the order of the samples.

    Example:
        >>> BlockRepairConfig(steps=50).lr
        0.001
    """

    steps: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, ge=1)
    held_out: float = Field(0.125, gt=0.0, lt=1.0)
    validate_every: int = Field(25, ge=1)
    seed: int = 0


class _Stop(Exception):
    """Raised by a hook once the inputs it wanted are captured."""


def _named(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ConfigError(f"distill_blocks: no module named {missing[0]!r} in {type(model).__name__}")
    return [modules[n] for n in names]


def block_inputs(model: nn.Module, block: nn.Module, calib: Sequence[Any]) -> torch.Tensor:
    """The first positional input of `block` for every calibration batch, concatenated (the model
    stops at the block)."""
    found: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            raise DataError(f"distill_blocks: a block's first input must be a tensor, got {type(args[0]).__name__}")
        found.append(args[0].detach())
        raise _Stop

    handle = block.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in calib:
                with contextlib.suppress(_Stop):
                    call_model(model, batch)
    finally:
        handle.remove()
    return torch.cat(found)


def check_chain(model: nn.Module, blocks: list[nn.Module], names: Sequence[str], batch: Any) -> None:
    """ConfigError unless each block's input is the previous block's output (on `batch`)."""
    outputs: dict[int, Any] = {}
    inputs: dict[int, Any] = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: inputs.setdefault(i, a[0] if a else None)))
        handles.append(block.register_forward_hook(lambda m, a, out, i=i: outputs.setdefault(i, out)))
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    for i in range(len(blocks) - 1):
        a, b = outputs.get(i), inputs.get(i + 1)
        if not (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        ):
            raise ConfigError(
                f"distill_blocks: block {names[i + 1]!r} does not read the output of {names[i]!r}; "
                "name blocks that follow one another (e.g. the stages of a Sequential)"
            )


def _run(block: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([block(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _relative_error(block: nn.Module, x: torch.Tensor, target: torch.Tensor, scale: float, batch_size: int) -> float:
    return float((_run(block, x, batch_size) - target).pow(2).mean() / scale)


def _train_block(
    block: nn.Module, x: torch.Tensor, target: torch.Tensor, config: BlockRepairConfig, generator: torch.Generator
) -> dict[str, float]:
    """Train `block` to map `x` to `target`; keeps its weights at the lowest held-out error."""
    n = len(x)
    n_val = max(1, int(round(n * config.held_out)))
    if n - n_val < 1:
        raise DataError(f"distill_blocks needs at least 2 calibration samples, got {n}")
    order = torch.randperm(n, generator=generator)
    train, val = order[: n - n_val], order[n - n_val :]
    scale = float(target.pow(2).mean().clamp_min(1e-12))
    params = [p for p in block.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    measure = lambda: _relative_error(block, x[val], target[val], scale, config.batch_size)  # noqa: E731
    before = best = measure()
    best_step, best_state = 0, copy.deepcopy(block.state_dict())
    try:
        for step in range(1, config.steps + 1):
            idx = train[torch.randint(len(train), (min(config.batch_size, len(train)),), generator=generator)]
            loss = (block(x[idx]) - target[idx]).pow(2).mean() / scale
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % config.validate_every == 0 or step == config.steps:
                err = measure()
                if err < best:
                    best, best_step, best_state = err, step, copy.deepcopy(block.state_dict())
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
    block.load_state_dict(best_state)
    return {"before": before, "after": best, "best_step": float(best_step)}


def distill_blocks(
    teacher: nn.Module,
    student: nn.Module,
    blocks: Sequence[str],
    calib: Sequence[Any],
    config: BlockRepairConfig | dict | None = None,
) -> dict[str, dict[str, float]]:
    """Train each named block of `student`, in order, to reproduce the teacher block's output (see
    the module docstring). Both models run in eval mode; the student is changed in place.

    Args:
        teacher: the reference model (e.g. the model before pruning); not changed.
        student: the compressed model; its blocks keep their names from the teacher.
        blocks: names of consecutive blocks (block i + 1 reads block i's output), in forward order.
        calib: unlabeled model inputs (batch convention); all samples are kept in memory per block.
        config: BlockRepairConfig (or a dict of its fields).

    Returns:
        block name -> {"before", "after": held-out error relative to the teacher output's mean
        square, "best_step"}.

    Example:
        >>> distill_blocks(float_model, pruned, [f"features.{i}" for i in range(2, 19)], calib_batches)
        {'features.2': {'before': 0.031, 'after': 0.012, 'best_step': 100.0}, ...}
    """
    config = config if isinstance(config, BlockRepairConfig) else BlockRepairConfig(**(config or {}))
    calib = list(calib)
    if not calib or not blocks:
        raise DataError("distill_blocks needs calibration batches and at least one block name")
    for batch in calib:
        check_finite(batch, "block-wise repair")
    student_blocks, teacher_blocks = _named(student, blocks), _named(teacher, blocks)
    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    try:
        check_chain(student, student_blocks, blocks, calib[0])
        x_student = block_inputs(student, student_blocks[0], calib)
        x_teacher = block_inputs(teacher, teacher_blocks[0], calib)
        generator = torch.Generator().manual_seed(config.seed)
        results = {}
        for name, s_block, t_block in zip(blocks, student_blocks, teacher_blocks, strict=True):
            target = _run(t_block, x_teacher, config.batch_size)
            results[name] = _train_block(s_block, x_student, target, config, generator)
            x_student, x_teacher = _run(s_block, x_student, config.batch_size), target
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    return results
