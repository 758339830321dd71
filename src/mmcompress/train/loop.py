"""One training loop for every model: AMP, seeds, per-epoch checkpoints with resume, DDP, progress."""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import check_finite, move_to
from mmcompress.core.hooks import run_step_hooks
from mmcompress.core.io import atomic_torch_save, safe_torch_load, stable_hash
from mmcompress.core.progress import progress_shown
from mmcompress.errors import ConfigError, DataError, ModelError
from mmcompress.train import distributed as ddp
from mmcompress.train.config import TrainConfig
from mmcompress.train.monitoring import EarlyStopping, TensorBoardLog
from mmcompress.train.tasks import Task


@dataclass
class TrainResult:
    """Per-epoch history (loss, metrics) and the final metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None  # with early stopping: the epoch whose weights were kept


FEW_STEPS = 30  # fewer optimizer steps in a whole fit than this: warn (batch too large for the data)


def seed_everything(seed: int) -> None:
    """Seed Python, torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> this process's GPU when there is one, else CPU; "cuda" without a GPU is an error."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelError("device 'cuda' requested but no GPU is available; use device 'cpu'")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config value on a device (None: full precision)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _freeze(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    names = [name for name, _ in model.named_modules()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise ConfigError(f"freeze prefix {prefix!r} matches no module of {type(model).__name__}")
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            module.eval()
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by learning rate (`config.lr_scale`: longest prefix wins)."""
    names = [name for name, _ in model.named_modules()]
    lr_scale = dict(config.lr_scale)
    for prefix, scale in lr_scale.items():
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise ConfigError(f"lr_scale prefix {prefix!r} matches no module of {type(model).__name__}")
        if not scale > 0:
            raise ConfigError(f"lr_scale for {prefix!r} must be > 0, got {scale}")
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        matches = [p for p in lr_scale if name.startswith(p + ".")]
        scale = lr_scale[max(matches, key=len)] if matches else 1.0
        groups.setdefault(scale, []).append(param)
    return [{"params": params, "lr": config.lr * scale} for scale, params in groups.items()]


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """`config.optimizer` over parameter groups: AdamW, or SGD with Nesterov momentum.

    Example:
        >>> make_optimizer([{"params": list(model.parameters())}], TrainConfig(optimizer="sgd", lr=1e-3))
    """
    if config.optimizer == "sgd":
        nesterov = config.momentum > 0
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=nesterov
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _schedule(total_steps: int):
    warmup = max(1, total_steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return factor


def fit(
    model: nn.Module,
    task: Task,
    train_data: Any,
    config: TrainConfig,
    *,
    val_data: Any = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `model` in place on `train_data` with `task`'s loss.

    Under torchrun (an initialised process group) each process takes its share of every global
    batch and gradients are averaged, so the result matches one process with the same batch.

    Args:
        model: the model (edited in place).
        task: batch construction, loss and evaluation.
        train_data: a dataset the task can index.
        config: a TrainConfig.
        val_data: evaluated after each epoch (metrics go into the history; with
            `config.early_stopping` it is also evaluated before training, the best epoch's weights
            are kept, epoch 0 meaning the starting weights, and training may stop early).
        checkpoint_dir: where `last.pt` is written each epoch; an existing one is resumed.
        progress: show a rich progress bar.
        on_epoch_end: called with the model after each epoch; its numbers join the history.

    Example:
        >>> fit(model, ClassificationTask(), load_dataset("digits"), TrainConfig(epochs=2))
    """
    if len(train_data) == 0:
        raise DataError("training data is empty")
    if config.early_stopping and val_data is None:
        raise ConfigError("early_stopping needs validation data (val_data) to watch")
    rank, size = ddp.world()
    device = resolve_device(config.device)
    model.to(device)
    seed_everything(config.seed)
    _freeze(model, config.freeze)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("nothing to train: every parameter is frozen")
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    if 0 < len(train_data) % config.batch_size < size:  # a last batch too small to give every process a sample
        steps_per_epoch -= 1
    if steps_per_epoch == 0:
        raise DataError(f"training data has {len(train_data)} samples: too few for {size} processes")
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    if total_steps < FEW_STEPS and not config.max_steps_per_epoch:
        warnings.warn(
            f"fit: {total_steps} optimizer step(s) in all ({len(train_data)} samples, batch_size "
            f"{config.batch_size}, {config.epochs} epoch(s)); few models learn in so few: lower batch_size or "
            "raise epochs",
            UserWarning,
            stacklevel=2,
        )
    optimizer = make_optimizer(_param_groups(model, config), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total_steps))
    dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    result, start_epoch = TrainResult(), 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    config_hash = stable_hash(config.identity())
    stopper = EarlyStopping(config.monitor or task.primary_metric, config.early_stopping or 0)
    if ckpt is not None and ckpt.exists():
        start_epoch, result.history = _resume(ckpt, config_hash, model, optimizer, scheduler, stopper)
    log = TensorBoardLog(config.log_dir) if config.log_dir and rank == 0 else None
    ddp.broadcast_model(model)
    task.prepare(model)
    stopped = bool(config.early_stopping) and stopper.bad_epochs >= stopper.patience
    if config.early_stopping and start_epoch == 0:  # the starting weights compete too (training may only hurt)
        start = {"epoch": 0, **task.evaluate(model, val_data)}
        if on_epoch_end is not None:
            start.update(on_epoch_end(model))
        stopper.update(start, model)
    for epoch in range(start_epoch, config.epochs if not stopped else start_epoch):
        model.train()
        _freeze(model, config.freeze)
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(train_data), generator=gen)
        losses = []
        with _progress(progress and rank == 0, f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch) as tick:
            for step in range(steps_per_epoch):
                index = ddp.shard(order[step * config.batch_size : (step + 1) * config.batch_size])
                inputs, targets = task.batch(train_data, index)
                check_finite(inputs, "training")
                inputs, targets = move_to(inputs, device), move_to(targets, device)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = task.loss(model, inputs, targets)
                if not torch.isfinite(loss):
                    raise DataError(f"loss became {loss.item()} at epoch {epoch + 1} step {step}; lower the lr")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                ddp.average_gradients(model)
                scaler.unscale_(optimizer)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                run_step_hooks(model)  # e.g. pruning masks re-zero their weights
                losses.append(float(loss.detach()))
                tick(losses[-1])
                if log is not None:
                    lr = scheduler.get_last_lr()[0]
                    log.scalars({"loss": losses[-1], "lr": lr}, epoch * steps_per_epoch + step, "train")
        entry = {"epoch": epoch + 1, "loss": ddp.all_mean(sum(losses) / len(losses))}
        if val_data is not None:
            entry.update(task.evaluate(model, val_data))
        if on_epoch_end is not None:
            entry.update(on_epoch_end(model))
            model.train()
        result.history.append(entry)
        if log is not None:
            log.scalars(entry, epoch + 1, "epoch")
        stop = bool(config.early_stopping) and stopper.update(entry, model)
        if ckpt is not None and rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            state.update(scheduler=scheduler.state_dict(), epoch=epoch + 1, history=result.history)
            state.update(early_stopping=stopper.state_dict())
            atomic_torch_save(ckpt, {**state, "config_hash": config_hash})
        if stop:
            break
    if log is not None:
        log.close()
    model.eval()
    if config.early_stopping and stopper.best_state is not None:
        stopper.restore(model)
        result.best_epoch = stopper.best_epoch
        best = stopper.best_entry or next((e for e in result.history if e["epoch"] == stopper.best_epoch), {})
        result.metrics = {k: v for k, v in best.items() if k != "epoch"}
    elif result.history:
        result.metrics = {k: v for k, v in result.history[-1].items() if k != "epoch"}
    return result


def _resume(ckpt: Path, config_hash: str, model, optimizer, scheduler, stopper: EarlyStopping) -> tuple[int, list]:
    state = safe_torch_load(ckpt)
    if state.get("config_hash") != config_hash:
        raise ModelError(
            f"checkpoint {ckpt} was written for another training config; delete it or use another output folder"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "early_stopping" in state:
        stopper.load_state_dict(state["early_stopping"])
    return int(state["epoch"]), list(state["history"])


@contextlib.contextmanager
def _progress(enabled: bool, label: str, total: int):
    if not enabled or not progress_shown():  # MMCOMPRESS_PROGRESS, else a terminal
        yield lambda loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, TextColumn("loss {task.fields[loss]:.4f}"), transient=True) as bar:
        handle = bar.add_task(label, total=total, loss=float("nan"))
        yield lambda loss: bar.update(handle, advance=1, loss=loss)
