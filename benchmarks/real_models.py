"""Conformance matrix: every technique x every real pretrained model, each cell measured against float.

Run: .venv/bin/python benchmarks/real_models.py [--models mobilenet,whisper,minilm,fusion] [--only NAME,...]
Writes the `real-models` section of docs/benchmarks.md (and the rows as JSON under /tmp).

Each cell starts from a fresh copy of the float model, applies one technique through the public
API, evaluates the task metric against the float model on held-out real inputs (calibration inputs
are disjoint), measures the stored size (`measure`), exports ONNX and checks the exported file
against PyTorch (cosine of outputs, file size). A technique that fails is an `error:` cell naming
the exception: it is a bug to fix, never a skipped row.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from _real_suites import Suite, fusion_suite, minilm_suite, mobilenet_suite, whisper_suite
from _results import machine, table, update_section

import mmcompress
from mmcompress.core.shared_params import modules_sharing_weight
from mmcompress.errors import UnsupportedError
from mmcompress.graph.storage import stored_bytes
from mmcompress.quant.act_equalize import equalize_activations
from mmcompress.quant.api import QuantConfig
from mmcompress.quant.equalize import correct_bias, equalize_cross_layer
from mmcompress.quant.mixed import MixedPrecisionConfig, quantize_mixed
from mmcompress.quant.tune import tune_quantized

W4G128 = {"weight_bits": 4, "granularity": "per_group", "group_size": 128}


def embedding_names(model) -> list[str]:
    """Embeddings and the Linear layers tied to them (Whisper's proj_out): the "int8 embeddings" targets."""
    tables = [n for n, m in model.named_modules() if type(m) is torch.nn.Embedding]  # not positional subclasses
    sharing = modules_sharing_weight(model)
    return sorted({*tables, *(o for n in tables for o in sharing.get(n, []))})


def _w4_int8_embeddings(method: str, inputs: dict | None = None):
    """W4 g128 everywhere but the embedding tables (and layers tied to them), which get W8 per channel:
    a token table is looked up row by row, so a 4-bit row is the token's whole error (no averaging).
    `inputs`: input quantization of the 4-bit layers (W4A8: {"activations": "dynamic", ...})."""

    def run(suite: Suite, model):
        config = {name: {"weight_bits": 8} for name in embedding_names(model)}
        rest = {**W4G128, "method": method, **(inputs or {})}
        mmcompress.quantize(model, {**config, "_default": rest}, calib=suite.calib)
        return {}

    return run


def _structured(ratio: float, unit: str = "channels", repair: bool = False, **allocation):
    """`allocation`: scope/budget options (e.g. scope "sensitivity", budget "params") for the suite's targets."""

    def run(suite: Suite, model):
        teacher = suite.load() if repair else None
        config = {"_default": {"ratio": ratio, "unit": unit, "reconstruct": True, **allocation}}  # refit on calib
        if unit == "heads" and suite.prune_heads is not None:  # the suite's own ranking (Whisper: global)
            rec = suite.prune_heads(model, ratio)
        elif unit == "channels" and suite.prune_channels is not None:  # the suite's targets (MobileNetV2)
            rec = suite.prune_channels(model, ratio, **allocation)
        else:
            rec = mmcompress.prune_structured(model, config, example_inputs=suite.example, calib=suite.calib)
        if repair:  # no BatchNorm re-estimation: the sequential refit already restores each layer's output
            suite.repair(teacher, model)
        removed = rec.metrics.get("removed")  # fraction of parameters removed
        return {"removed": removed, "units_removed": rec.metrics.get("units_removed"), "kept": _kept(rec)}

    return run


def _kept(record) -> str:
    """Units kept per shrunk module, in order ("6,6,5,3,..."): global ranking gives uneven counts."""
    return ",".join(str(e["kept"]) for e in record.modules.values() if e.get("structure") in ("heads", "channels"))


def _calibrated(config: dict, equalize: bool | str = False, bias: bool = True, tune: bool = False):
    """Fold BatchNorm (and optionally equalize ranges across layers), quantize with GPTQ, correct
    biases; `tune`: then distillation tuning through the integer simulation (`tune_quantized`)."""

    def run(suite: Suite, model):
        folded = mmcompress.fold_batchnorm(model).metrics.get("folded", 0)
        if not folded:
            raise UnsupportedError("no BatchNorm to fold: bias correction rows are for BatchNorm CNNs")
        if equalize == "activations":  # per-channel weights: equalize the activations' channel ranges instead
            equalize_activations(model, suite.calib)
        elif equalize:
            equalize_cross_layer(model)
        reference = copy.deepcopy(model)
        mmcompress.quantize(model, {**config, "method": "gptq"}, calib=suite.calib)
        if bias:
            correct_bias(model, reference, suite.calib)
        if tune:
            if suite.tune_batches is None:
                raise UnsupportedError("no unlabeled tuning inputs for this model")
            losses = tune_quantized(model, reference, suite.tune_batches())
            return {"tune_loss": f"{losses['loss_first']:.4f} -> {losses['loss_last']:.4f}"}
        return {}

    return run


TECHNIQUES = {  # name -> (suite, model) -> extra columns; the model is edited in place
    "fold BatchNorm": lambda s, m: {"folded": mmcompress.fold_batchnorm(m).metrics.get("folded")},
    "W8 weight-only": lambda s, m: mmcompress.quantize(m, QuantConfig(weight_bits=8)) and {},
    "W8A8 dynamic": lambda s, m: mmcompress.quantize(m, {"weight_bits": 8, "activations": "dynamic"}) and {},
    "W8A8 static": lambda s, m: (
        mmcompress.quantize(m, {"weight_bits": 8, "activations": "static"}, calib=s.calib) and {}
    ),
    "W8 GPTQ + bias correction": _calibrated({"weight_bits": 8}),
    "W8A8 static + CLE + GPTQ + bias corr.": _calibrated({"weight_bits": 8, "activations": "static"}, equalize=True),
    "W8A8 static + CLE + GPTQ (percentile)": _calibrated(
        {"weight_bits": 8, "activations": "static", "act_observer": "percentile"}, equalize=True, bias=False
    ),
    "W8A8 static + CLE + GPTQ (search)": _calibrated(
        {"weight_bits": 8, "activations": "static", "act_observer": "search"}, equalize=True, bias=False
    ),
    "W8A8 static + act. equalization + GPTQ (percentile)": _calibrated(
        {"weight_bits": 8, "activations": "static", "act_observer": "percentile"}, equalize="activations", bias=False
    ),
    "W8A8 static + CLE + GPTQ + distillation tuning": _calibrated(
        {"weight_bits": 8, "activations": "static", "act_observer": "percentile"}, equalize=True, bias=False, tune=True
    ),
    "W8A8 static + act. equalization + GPTQ + distillation tuning": _calibrated(
        {"weight_bits": 8, "activations": "static", "act_observer": "percentile"},
        equalize="activations",
        bias=False,
        tune=True,
    ),
    "W4 g128 RTN": lambda s, m: mmcompress.quantize(m, W4G128) and {},
    "W4 g128 GPTQ": lambda s, m: mmcompress.quantize(m, {**W4G128, "method": "gptq"}, calib=s.calib) and {},
    "W4 g128 RTN + int8 embeddings": _w4_int8_embeddings("rtn"),
    "W4 g128 GPTQ + int8 embeddings": _w4_int8_embeddings("gptq"),
    "W4A8 g128 GPTQ + int8 embeddings (per-token inputs)": _w4_int8_embeddings(
        "gptq", {"activations": "dynamic", "act_granularity": "per_token"}
    ),
    "mixed ~5 bits": lambda s, m: {
        "avg_bits": quantize_mixed(m, MixedPrecisionConfig(average_bits=5.0, bits_options=(3, 4, 6, 8)), s.calib)[
            1
        ].average_bits
    },
    "50% magnitude (layer)": lambda s, m: mmcompress.prune(m, {"sparsity": 0.5, "scope": "layer"}) and {},
    "50% magnitude (global)": lambda s, m: mmcompress.prune(m, {"sparsity": 0.5, "scope": "global"}) and {},
    "50% Wanda": lambda s, m: (
        mmcompress.prune(m, {"sparsity": 0.5, "method": "wanda", "scope": "row"}, data=s.calib) and {}
    ),
    "50% SparseGPT": lambda s, m: (
        mmcompress.prune(m, {"sparsity": 0.5, "method": "sparsegpt", "scope": "layer"}, data=s.calib) and {}
    ),  # fmt: skip
    "30% channels": _structured(0.3),
    "30% channels + repair": _structured(0.3, repair=True),
    "30% params (sensitivity)": _structured(0.3, scope="sensitivity", budget="params", ablation_batches=4),
    "25% heads + repair": _structured(0.25, unit="heads", repair=True),
}
OWN_CHANNELS_ONLY = ("30% params (sensitivity)",)
BATCHNORM_ONLY = (
    "fold BatchNorm",
    "W8 GPTQ + bias correction",
    "W8A8 static + CLE + GPTQ + bias corr.",
    "W8A8 static + CLE + GPTQ (percentile)",
    "W8A8 static + CLE + GPTQ (search)",
    "W8A8 static + act. equalization + GPTQ (percentile)",
    "W8A8 static + CLE + GPTQ + distillation tuning",
    "W8A8 static + act. equalization + GPTQ + distillation tuning",
)
SUITES = {"mobilenet": mobilenet_suite, "whisper": whisper_suite, "minilm": minilm_suite, "fusion": fusion_suite}


def _stored_mb(model) -> float:
    """The compact file's payload (what `measure` reports as stored bytes), without timing the model."""
    return sum(stored_bytes(model).values()) / 1e6


def _onnx(suite: Suite, model, folder: Path) -> dict:
    path = folder / "model.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = mmcompress.export_onnx(model, suite.example, path)
    info = result.to_dict()
    path.unlink(missing_ok=True)
    return {
        "onnx_cosine": info.get("cosine"),
        "onnx_mb": info.get("file_bytes", 0) / 1e6,
        "onnx_warnings": [str(w.message)[:160] for w in caught if issubclass(w.category, UserWarning)],
    }


def run_cell(suite: Suite, name: str, folder: Path) -> dict:
    row = {"technique": name}
    if name in OWN_CHANNELS_ONLY and suite.prune_channels is None:
        return {**row, "status": "n/a (measured where the suite names its channel targets: MobileNetV2)"}
    if name.endswith("heads + repair") and not suite.heads:
        return {**row, "status": "n/a (no attention heads)"}
    if name in BATCHNORM_ONLY and not suite.batchnorm:
        return {**row, "status": "n/a (no BatchNorm)"}
    if name.endswith("distillation tuning") and suite.tune_batches is None:
        return {**row, "status": "n/a (no unlabeled tuning inputs in this suite)"}
    model = suite.load()
    if name.endswith("int8 embeddings") and not embedding_names(model):
        return {**row, "status": "n/a (no embeddings)"}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row.update(TECHNIQUES[name](suite, model) or {})
        row["warnings"] = sorted({str(w.message)[:160] for w in caught if issubclass(w.category, UserWarning)})
        row.update(suite.evaluate(model))
        row["stored_mb"] = _stored_mb(model)
        row["status"] = "ok"
    except Exception as err:  # a cell that fails is reported, and is a bug
        row["status"] = f"error: {type(err).__name__}: {str(err)[:200]}"
        traceback.print_exc()
        return row
    try:
        row.update(_onnx(suite, model, folder))
    except Exception as err:
        row["onnx_error"] = f"{type(err).__name__}: {str(err)[:160]}"
    row["seconds"] = time.perf_counter() - start
    return row


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(results: dict[str, list[dict]], baselines: dict[str, dict]) -> str:
    parts = [
        f"Written by `benchmarks/real_models.py` ({machine()}). Each cell: the technique applied through the "
        "public API to a fresh copy of the float model; the metric is measured against the float model on "
        "held-out real inputs (calibration inputs are disjoint); size is `measure`'s stored size; ONNX is the "
        "exported file (cosine of its outputs to PyTorch's on the export batch, and its size on disk)."
    ]
    for suite_name, rows in results.items():
        base = baselines[suite_name]
        metrics = [k for k in base if k not in ("stored_mb",)]
        head = ["technique", *metrics, "stored MB", "ONNX MB", "ONNX cosine", "status / notes"]
        body = [["float32", *[_fmt(base[k]) for k in metrics], _fmt(base["stored_mb"], 2), "", "", "reference"]]
        for r in rows:
            notes = r["status"] if r["status"] != "ok" else "; ".join(r.get("warnings", [])[:2])
            if r.get("units_removed") is not None:  # what was removed, not only what was asked
                kept = f"; kept per module {r['kept']}" if r.get("kept") else ""
                share = f"removed {r['units_removed']:.1%} of the units ({r['removed']:.1%} of parameters{kept}). "
                notes = share + notes
            if r.get("onnx_error"):
                notes += f" ONNX error: {r['onnx_error']}"
            elif r.get("onnx_warnings"):
                notes += " ONNX: " + "; ".join(r["onnx_warnings"][:1])
            sizes = [_fmt(r.get("stored_mb"), 2), _fmt(r.get("onnx_mb"), 2), _fmt(r.get("onnx_cosine"), 4)]
            body.append([r["technique"], *[_fmt(r.get(k)) for k in metrics], *sizes, notes.replace("|", "/")])
        parts.append(f"### {suite_name}\n\n" + table([head, *body]))
    return "\n\n".join(parts)


def _results_file(key: str) -> Path:
    """Rows of one model's runs so far (a file per model, so models can run in separate processes)."""
    return Path(tempfile.gettempdir()) / f"mmc-real-{key}.json"


def _load(key: str) -> dict:
    path = _results_file(key)
    return json.loads(path.read_text()) if path.exists() else {"baseline": None, "rows": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(SUITES))
    parser.add_argument("--only", default="", help="comma-separated technique names (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated technique names to leave out")
    parser.add_argument("--fresh", action="store_true", help="forget rows of earlier runs (default: merge)")
    parser.add_argument("--render-only", action="store_true", help="write the doc section from saved rows")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    keys = args.models.split(",")
    wanted = [t for t in TECHNIQUES if (not args.only or t in args.only.split(",")) and t not in args.skip.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="mmc-real-"))
    for key in [] if args.render_only else keys:
        suite = SUITES[key]()
        saved = {"baseline": None, "rows": []} if args.fresh else _load(key)
        float_model = suite.load()
        saved.update(name=suite.name, baseline={**suite.evaluate(float_model), "stored_mb": _stored_mb(float_model)})
        print(suite.name, saved["baseline"], flush=True)
        rows = {r["technique"]: r for r in saved["rows"]}
        for name in wanted:
            rows[name] = run_cell(suite, name, folder)
            print(json.dumps(rows[name], default=str), flush=True)
            saved["rows"] = [rows[t] for t in TECHNIQUES if t in rows]
            _results_file(key).write_text(json.dumps(saved, default=str, indent=1))  # every finished cell is kept
        torch.manual_seed(0)
    if not args.no_write:
        runs = [_load(k) for k in SUITES if _results_file(k).exists()]
        body = render({r["name"]: r["rows"] for r in runs}, {r["name"]: r["baseline"] for r in runs})
        update_section("real-models", "## Real pretrained models: conformance matrix\n\n" + body)


if __name__ == "__main__":
    main()
