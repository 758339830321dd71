"""CLI commands that compress a built-in model in one go: `quantize` and `prune` (each builds a
one-off recipe: evaluate, compress, evaluate, export, and runs it like `mmcompress run`)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mmcompress.cli_common import _data_options, _force_option, _friendly, _run_recipe, _spec_options, cli
from mmcompress.errors import ConfigError


class _Bits(click.ParamType):
    """An integer number of weight bits, or "auto"."""

    name = "bits"

    def convert(self, value, param, ctx):
        if str(value).lower() == "auto":
            return "auto"
        try:
            bits = int(value)
        except ValueError:
            bits = 0
        if not 2 <= bits <= 8:
            self.fail(f"{value!r} is not a number of bits (2..8) or 'auto'", param, ctx)
        return bits


@cli.command("quantize")
@click.argument("model")
@click.option(
    "--bits", type=_Bits(), default="auto", show_default=True,
    help="Weight bits (2..8), or auto: 8 weight-only; with --activations, the widest codes this CPU's integer "
    "kernels cannot saturate (8 with VNNI/AMX, 7 on AVX2 without VNNI).",
)  # fmt: skip
@click.option(
    "--granularity", type=click.Choice(["per_channel", "per_group", "per_tensor"]), default="per_channel",
    show_default=True,
)  # fmt: skip
@click.option("--group-size", type=int, default=128, show_default=True, help="Inputs per step with per_group.")
@click.option(
    "--scheme", type=click.Choice(["auto", "symmetric", "asymmetric"]), default="auto", show_default=True,
    help="Weight steps without or with a zero point (auto: with one at 4 bits or fewer).",
)  # fmt: skip
@click.option("--method", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True)
@click.option(
    "--activations", type=click.Choice(["none", "dynamic", "static"]), default="none", show_default=True,
    help="W8A8: quantize Linear inputs too (static needs --bits 7 or 8; dynamic also takes grouped "
    "4-bit weights: W4A8).",
)  # fmt: skip
@click.option("--act-granularity", type=click.Choice(["per_tensor", "per_token"]), default="per_tensor")
@click.option("--act-observer", type=click.Choice(["minmax", "percentile", "mse", "kl", "search"]), default="minmax")
@click.option("--smoothquant", type=float, default=None, help="SmoothQuant migration strength alpha in (0, 1).")
@click.option(
    "--only", "only", multiple=True,
    help="Quantize only these targets (exact name, re:REGEX or modality:TOWER); repeatable. Default: all.",
)  # fmt: skip
@click.option(
    "--tune-steps", type=click.IntRange(min=0), default=0, show_default=True,
    help="Then distil the quantized model from the float one for N steps (tune_quantized; 0: off).",
)  # fmt: skip
@click.option(
    "--tune-for", type=click.Choice(["pytorch", "onnx-qdq"]), default="pytorch", show_default=True,
    help="What --tune-steps tunes: the PyTorch model, or its QDQ ONNX file's extra roundings (static W8A8).",
)  # fmt: skip
@click.option(
    "--fold-bn/--no-fold-bn", "fold_bn", default=None,
    help="Fold BatchNorm into the convolution before it first (exact). Default: with --activations static, "
    "whose ONNX Runtime integer kernels need folded convolutions.",
)  # fmt: skip
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Export and evaluate on ONNX Runtime.")
@click.option("--train-limit", type=int, default=None, help="Train the baseline (and calibrate) on N samples.")
@click.option("--epochs", type=int, default=None, help="Baseline training epochs (when it is not cached yet).")
@click.option("--test-limit", type=int, default=None, help="Evaluate on the first N test samples.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/quantize"), show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Reuse finished stages.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_force_option
@_spec_options
@_data_options
@_friendly
def quantize_cmd(model, bits, granularity, group_size, scheme, method, activations, act_granularity, act_observer,
                 smoothquant, only, tune_steps, tune_for, fold_bn, onnx, train_limit, epochs, test_limit, out, resume,
                 quiet, data_spec, task, adapter, data_dir, cache_dir, force):  # fmt: skip
    """Quantize MODEL (a spec): evaluate, quantize, evaluate (and export); report in --out.

    Example: mmcompress quantize py:my_models.py:build --data py:my_data.py:load --task agreement --bits 8
    """
    from mmcompress.quant.config import QuantConfig
    from mmcompress.recipe.schema import load_recipe

    config = {
        "weight_bits": bits, "granularity": granularity, "group_size": group_size, "scheme": scheme, "method": method,
        "activations": activations, "act_granularity": act_granularity, "act_observer": act_observer,
        "smoothquant": smoothquant,
    }  # fmt: skip
    _check_flags(QuantConfig, config, QUANT_FLAGS)
    quantize_stage = {"pass": "quantize", "config": config}
    if only:
        quantize_stage["targets"] = {key: {} for key in only}
    stages = [{"name": "baseline", "pass": "evaluate"}, quantize_stage]
    if fold_bn or fold_bn is None and activations == "static":
        stages.insert(1, {"pass": "fold_batchnorm"})
    if tune_steps:
        stages.append({"pass": "tune_quantized", "config": {"steps": tune_steps, "target": tune_for}})
    stages.append({"name": "quantized", "pass": "evaluate"})
    if onnx:
        stages.append({"pass": "export_onnx"})
    recipe = _recipe(model, train_limit, test_limit, epochs, stages, data_spec, task, adapter)
    _run_recipe(load_recipe(recipe), "quantize", out, resume, quiet, data_dir, cache_dir, force)


QUANT_FLAGS = {"weight_bits": "--bits", "granularity": "--granularity", "group_size": "--group-size",
               "scheme": "--scheme", "method": "--method", "activations": "--activations",
               "act_granularity": "--act-granularity", "act_observer": "--act-observer",
               "smoothquant": "--smoothquant"}  # fmt: skip
PRUNE_FLAGS = {"sparsity": "--sparsity", "method": "--method", "pattern": "--pattern", "ratio": "--ratio",
               "unit": "--structured", "scope": "--scope", "max_ratio": "--max-ratio", "budget": "--budget",
               "reconstruct": "--reconstruct"}  # fmt: skip


def _check_flags(config_class: type, config: dict, flags: dict[str, str]) -> None:
    """Settings that do not fit together are reported in the flags' words, before any work.

    Example:
        >>> from mmcompress.quant.config import QuantConfig
        >>> _check_flags(QuantConfig, {"weight_bits": 8, "activations": "static"}, QUANT_FLAGS)
    """
    from pydantic import ValidationError

    try:
        config_class.model_validate(config)
    except ValidationError as err:
        first = err.errors()[0]
        message = re.sub(r" \(got \{.*\}\)$", "", first["msg"].rsplit("Value error, ", 1)[-1])
        message = re.sub(rf"^'{config_class.__name__}\.(\w+)': ", r"\1: ", message)  # a field's own check
        if first["loc"] and message.startswith("Input"):
            message = f"{first['loc'][0]}: {message} (got {first['input']})"
        for field, flag in flags.items():
            message = re.sub(
                rf"\b{field}\b( '?([\w.:]*)'?)?", lambda m, f=flag: f"{f} {m[2]}" if m[2] else f + (m[1] or ""), message
            )
        raise ConfigError(message) from None


PRUNE_METHODS = ["magnitude", "taylor", "fisher", "wanda", "sparsegpt", "variance", "reconstruction", "ablation"]


@cli.command("prune")
@click.argument("model")
@click.option("--sparsity", type=float, default=0.5, show_default=True, help="Unstructured: fraction removed.")
@click.option(
    "--method",
    type=click.Choice(PRUNE_METHODS),
    default=None,
    help="Importance [default: magnitude; structured: auto, i.e. variance for channels, magnitude for heads].",
)  # fmt: skip
@click.option("--pattern", default="unstructured", show_default=True, help="'unstructured' or N:M such as 2:4.")
@click.option("--structured", type=click.Choice(["channels", "heads"]), default=None,
              help="Remove whole channels/neurons/LSTM units or attention heads instead (tensors shrink).")  # fmt: skip
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Structured: fraction of units removed.")
@click.option("--scope", type=click.Choice(["layer", "global", "sensitivity"]), default="layer", show_default=True,
              help="Structured: remove --ratio of every layer, of all units ranked together, or of all units "
                   "with each layer's share set by its measured sensitivity.")  # fmt: skip
@click.option("--max-ratio", type=float, default=None,
              help="Structured, global|sensitivity scope: the most one layer loses [default: 2 x ratio].")  # fmt: skip
@click.option("--budget", type=click.Choice(["units", "params"]), default="units", show_default=True,
              help="Structured, sensitivity scope: --ratio counts units or the parameters they carry.")  # fmt: skip
@click.option("--reconstruct", is_flag=True,
              help="Structured: refit the layers reading removed units by least squares")  # fmt: skip
@click.option("--only", "only", multiple=True, help="Prune only these targets (name, re:REGEX, modality:TOWER).")
@click.option("--finetune-epochs", type=int, default=1, show_default=True, help="Recovery epochs (0: none).")
@click.option("--finetune-lr", type=float, default=None, help="Recovery learning rate [default: the finetune pass's].")
@click.option("--finetune-batch-size", type=int, default=None,
              help="Recovery batch size [default: the finetune pass's]; small data needs small batches.")  # fmt: skip
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Export and evaluate on ONNX Runtime.")
@click.option("--train-limit", type=int, default=None, help="Train the baseline (and fine-tune) on N samples.")
@click.option("--epochs", type=int, default=None, help="Baseline training epochs (when it is not cached yet).")
@click.option("--test-limit", type=int, default=None, help="Evaluate on the first N test samples.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/prune"), show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Reuse finished stages.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_force_option
@_spec_options
@_data_options
@_friendly
def prune_cmd(model, sparsity, method, pattern, structured, ratio, scope, max_ratio, budget, reconstruct, only,
              finetune_epochs, finetune_lr, finetune_batch_size, onnx,
              train_limit,
              epochs, test_limit, out, resume, quiet, data_spec, task, adapter, data_dir, cache_dir,
              force):  # fmt: skip
    """Prune MODEL (a spec): evaluate, prune, fine-tune, evaluate (and export); report in --out.

    Example: mmcompress prune digits-cnn --structured channels --ratio 0.3 --reconstruct
    (heads of all attention layers ranked together: --structured heads --method ablation --scope global)
    """
    from mmcompress.prune.api import PruneConfig
    from mmcompress.prune.structured import StructuredConfig
    from mmcompress.recipe.schema import load_recipe

    if structured:
        method = method or "auto"
        if method in ("wanda", "sparsegpt"):
            raise ConfigError(
                f"structured pruning takes magnitude, variance, reconstruction, taylor, fisher or ablation (heads), "
                f"not {method}"
            )
        config = {"ratio": ratio, "unit": structured, "method": method, "scope": scope, "reconstruct": reconstruct}
        if max_ratio is not None:
            config["max_ratio"] = max_ratio
        if budget != "units":
            config["budget"] = budget
        _check_flags(StructuredConfig, config, PRUNE_FLAGS)
        stage = {"pass": "prune_structured", "config": config}
    else:
        if reconstruct or method in ("variance", "reconstruction", "ablation"):
            what = "--reconstruct" if reconstruct else f"--method {method}"
            raise ConfigError(f"{what} is for structured pruning: add --structured channels|heads")
        config = {"sparsity": sparsity, "method": method or "magnitude", "pattern": pattern}
        _check_flags(PruneConfig, config, PRUNE_FLAGS)
        stage = {"pass": "prune", "config": config}
    if only:
        stage["targets"] = {key: {} for key in only}
    stages = [{"name": "baseline", "pass": "evaluate"}, stage]
    if finetune_epochs:  # the model's own frozen parts (e.g. fashion-clip's MiniLM) stay frozen
        freeze = list(builtin_freeze(model))
        tuning = {"lr": finetune_lr, "batch_size": finetune_batch_size}
        config = {"epochs": finetune_epochs, "freeze": freeze, **{k: v for k, v in tuning.items() if v is not None}}
        stages.append({"pass": "finetune", "config": config})
    stages.append({"name": "pruned", "pass": "evaluate"})
    if onnx:
        stages.append({"pass": "export_onnx"})
    recipe = _recipe(model, train_limit, test_limit, epochs, stages, data_spec, task, adapter)
    _run_recipe(load_recipe(recipe), "prune", out, resume, quiet, data_dir, cache_dir, force)


def builtin_freeze(model: str) -> tuple[str, ...]:
    """Parameters a built-in model keeps frozen in training (fashion-clip's MiniLM); none for others."""
    from mmcompress.models.zoo import MODELS

    return tuple(MODELS[model].train.freeze) if model in MODELS else ()


def _recipe(model: str, train_limit, test_limit, epochs, stages: list[dict], data=None, task=None,
            adapter=None) -> dict:  # fmt: skip
    recipe = {"model": model, "data": {"train_limit": train_limit, "test_limit": test_limit}, "stages": stages}
    recipe.update({k: str(v) for k, v in dict(dataset=data, task=task, adapter=adapter).items() if v})
    if epochs is not None:
        recipe["train"] = {"epochs": epochs}
    return recipe
