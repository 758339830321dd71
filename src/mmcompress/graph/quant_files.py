"""Save and load quantized models: compact safetensors + a JSON quantization map. No pickle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from torch import nn

from mmcompress.core.io import atomic_write_json, check_sha256, file_sha256, json_digest, load_state_checked
from mmcompress.core.record import EDITS, Record, structure_edits
from mmcompress.errors import ModelError, UnsupportedError
from mmcompress.graph.folding import replay_fold
from mmcompress.graph.lowrank import replay_factorize
from mmcompress.graph.storage import load_compact, save_compact
from mmcompress.models.split_attention import SplitMultiheadAttention, split_attention
from mmcompress.prune.structured import replay_structured
from mmcompress.quant.api import replay_quantize
from mmcompress.quant.modules import QUANT_LAYERS

WEIGHTS, QUANT_MAP = "weights.safetensors", "quant_map.json"
REPLAY = {"prune_structured": replay_structured, "factorize": replay_factorize, "fold_batchnorm": replay_fold}


def quant_map(model: nn.Module) -> dict:
    """Every quantized module: its type, grid and activation mode (what `load_quantized` rebuilds)."""
    return {
        name: {
            "type": type(m).__name__,
            "bits": m.bits,
            "grid": asdict(m.grid),
            "activations": "none" if getattr(m, "act", None) is None else asdict(m.act),
            "smoothquant": True if hasattr(m, "act_smooth") else None,
        }
        for name, m in model.named_modules()
        if isinstance(m, QUANT_LAYERS)
    }


def save_quantized(model: nn.Module, folder: str | Path) -> Path:
    """Write `weights.safetensors` (packed codes, steps, zero points, float rest) and `quant_map.json`
    (with the nn.MultiheadAttention modules quantization split, which loading splits again, and the
    records of structured pruning, low-rank factorization and BatchNorm folding done to the model
    through the API, which loading replays on a fresh model of the original architecture).

        Example:
            >>> save_quantized(model, "out/w4")
    """
    folder = Path(folder)
    save_compact(model, folder / WEIGHTS)
    info = {
        "format": "mmcompress-quant-v1",
        "modules": quant_map(model),
        "split_attention": [n for n, m in model.named_modules() if isinstance(m, SplitMultiheadAttention)],
        "structure": structure_edits(model),
        "weights_sha256": file_sha256(folder / WEIGHTS),
    }
    info["map_sha256"] = json_digest(info, "map_sha256")
    atomic_write_json(folder / QUANT_MAP, info)
    return folder


def load_quantized(model: nn.Module, folder: str | Path) -> nn.Module:
    """Rebuild a saved quantized model on a float model of the same architecture; outputs are bit-exact.

    Example:
        >>> model = load_quantized(build_model("fashion-clip"), "out/w4")
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / QUANT_MAP).read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{folder / QUANT_MAP} is missing or not JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != "mmcompress-quant-v1":
        raise ModelError(f"{folder / QUANT_MAP} is not an mmcompress quantization map")
    if "map_sha256" in info and info["map_sha256"] != json_digest(info, "map_sha256"):
        raise ModelError(f"{folder / QUANT_MAP} does not match its recorded SHA-256 (corrupted); save the model again")
    check_sha256(folder / WEIGHTS, info.get("weights_sha256"), "quantized weights", "save the model again")
    edits = info.get("structure", [])
    _replay_structure(model, edits, folder / QUANT_MAP)
    try:
        split_attention(model, info.get("split_attention", []))  # nn.MultiheadAttention as it was quantized
    except (AttributeError, UnsupportedError) as err:
        raise ModelError(f"{folder / QUANT_MAP} names attention modules {type(model).__name__} lacks: {err}") from None
    modules = dict(model.named_modules())
    try:
        for name, entry in info["modules"].items():
            expected = entry["type"].replace("Quant", "")
            if name not in modules or type(modules[name]).__name__ != expected:
                raise ModelError(f"quantized module {name!r} ({expected}) is not in {type(model).__name__}")
        replay_quantize(model, Record("quantize", {}, info["modules"]))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ModelError(
            f"{folder / QUANT_MAP} is corrupted ({type(err).__name__}: {err}); save the model again"
        ) from None
    state, _ = load_compact(folder / WEIGHTS)
    load_state_checked(model, state, str(folder / WEIGHTS), "was it saved from this architecture?")
    model.__dict__[EDITS] = list(edits)  # saving the loaded model again keeps them
    return model.eval()


def _replay_structure(model: nn.Module, edits: list, where: Path) -> None:
    """Shrink / refactor a fresh model the way the saved one was, before its weights load."""
    for edit in edits:
        try:
            REPLAY[edit["technique"]](model, Record.from_dict(edit))
        except (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError) as err:
            raise ModelError(
                f"{where} records a {edit.get('technique', '?')!r} change that does not replay on "
                f"{type(model).__name__} ({type(err).__name__}: {str(err)[:160]}); was it saved from this architecture?"
            ) from None
