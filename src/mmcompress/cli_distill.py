"""`mmcompress distill MODEL`: build a smaller student from a built-in model (fewer channels and/or
fewer transformer layers) and train it against the original (one-off recipe, run like `run`)."""

from __future__ import annotations

from pathlib import Path

import click

from mmcompress.cli_common import _data_options, _force_option, _friendly, _run_recipe, _spec_options, cli
from mmcompress.cli_compress import _recipe, builtin_freeze
from mmcompress.errors import ConfigError


@cli.command("distill")
@click.argument("model")
@click.option("--channels", type=float, default=None, help="Remove this fraction of conv channels / neurons.")
@click.option("--only", "only", multiple=True, help="Narrow only these targets (name, re:REGEX, modality:TOWER).")
@click.option("--keep-every", type=int, default=None, help="Keep every k-th transformer layer (DistilBERT init).")
@click.option("--layers", "layer_path", default=None, help="Path of the layer stack (default: the longest one).")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of the distillation loss.")
@click.option(
    "--mode", type=click.Choice(["auto", "logits", "contrastive", "embedding"]), default="auto", show_default=True
)
@click.option("--kd-epochs", type=int, default=3, show_default=True, help="Distillation epochs.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--amp", type=click.Choice(["auto", "none", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Export and evaluate on ONNX Runtime.")
@click.option("--train-limit", type=int, default=None, help="Train the teacher (and distill) on N samples.")
@click.option("--epochs", type=int, default=None, help="Teacher training epochs (when it is not cached yet).")
@click.option("--test-limit", type=int, default=None, help="Evaluate on the first N test samples.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/distill"), show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Reuse finished stages.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_force_option
@_spec_options
@_data_options
@_friendly
def distill_cmd(model, channels, only, keep_every, layer_path, temperature, alpha, mode, kd_epochs, lr, batch_size, amp,
                onnx, train_limit, epochs, test_limit, out, resume, quiet, data_spec, task, adapter,
                data_dir, cache_dir, force):  # fmt: skip
    """Shrink MODEL (a spec) into a student and distill it from the original; report in --out.

    Example: mmcompress distill fashion-cnn --channels 0.5 --kd-epochs 3
    """
    from mmcompress.recipe.schema import load_recipe

    if channels is None and keep_every is None:
        raise ConfigError("say how the student is smaller: --channels RATIO and/or --keep-every K")
    stages: list[dict] = [{"name": "teacher", "pass": "evaluate"}]
    if channels is not None:
        stage = {"pass": "prune_structured", "config": {"ratio": channels}}
        if only:
            stage["targets"] = {key: {} for key in only}
        stages.append(stage)
    freeze = list(builtin_freeze(model))
    if keep_every is not None:
        from mmcompress.distill.students import every_kth, layer_stack
        from mmcompress.recipe.specs import load_model_spec

        _, stack = layer_stack(load_model_spec(model, pretrained=False), layer_path)  # checked before any work
        every_kth(len(stack), keep_every)
        stages.append({"pass": "drop_layers", "config": {"every": keep_every, "path": layer_path}})
        freeze = []  # a shallower tower has to learn
    stages.append({"name": "student", "pass": "evaluate"})
    train = {"epochs": kd_epochs, "lr": lr, "batch_size": batch_size, "amp": amp, "freeze": freeze}
    config = {"temperature": temperature, "alpha": alpha, "mode": mode, "train": train}
    stages += [{"pass": "distill", "config": config}, {"name": "distilled", "pass": "evaluate"}]
    if onnx:
        stages.append({"pass": "export_onnx"})
    recipe = _recipe(model, train_limit, test_limit, epochs, stages, data_spec, task, adapter)
    _run_recipe(load_recipe(recipe), "distill", out, resume, quiet, data_dir, cache_dir, force)
