"""all-MiniLM-L6-v2 (real weights): accuracy, size and speed of our quantization variants and peers.

Run: .venv/bin/python benchmarks/minilm_int8.py [--accuracy-only | --reuse] [--no-peers] [--no-onnx]
[--variants "SUBSTRING;..."]   (about 30 minutes on 2 cores; peers need `pip install -e '.[bench]'`;
--reuse times the models of the last run again without rebuilding them; --variants keeps the
variants whose name contains one of the substrings). Writes the `minilm-int8` section of
docs/benchmarks.md. Our quantized models run in PyTorch on the integer kernels of
`mmcompress.quant.kernels` (kernel "auto"); W8A8 weight bits come from `core.cpu.integer_weight_bits`.
Accuracy: mean/min cosine similarity of sentence embeddings to float32 on 504 sentences (304
captions + 200 prose sentences), embedded in batches of 32. Speed: batch 32 x 128 and 1 x 128
tokens, every runtime in its own process with 2 threads, 3 rounds taken in turn (machine drift
hits all runtimes alike), median over all calls (runtimes slower than a second per call stop
after 12 s of calls per round).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _minilm_data import calibration_batches, embed, evaluation_sentences, long_batch
from _minilm_peers import ONNX_PEERS, TORCH_PEERS
from _results import machine, summarize, table, update_section

from mmcompress.core.cpu import cpu_features, integer_weight_bits
from mmcompress.graph.export import export_onnx
from mmcompress.graph.runtime import OrtModel
from mmcompress.graph.storage import stored_bytes
from mmcompress.models.minilm import MiniLMEncoder
from mmcompress.quant.api import QuantConfig, quantize

HERE = Path(__file__).resolve().parent
WORK = Path(tempfile.gettempdir()) / "mmc-minilm-bench"  # ONNX files and accuracy rows of the last run
EMB = {"re:.*embeddings.*": QuantConfig()}  # embedding tables: int8 rows in every variant
BITS = integer_weight_bits()  # 8 with VNNI/AMX, 7 on AVX2-only CPUs (u8s8 saturation)
A8 = {"weight_bits": BITS, "activations": "dynamic"}
WA = f"W{BITS}A8"
FFN_DOWN = r"re:.*layer\.\d+\.output\.dense"  # the FFN's second Linear: its GELU input has outlier tokens
W4 = {"weight_bits": 4, "granularity": "per_group", "scheme": "asymmetric"}
SQ_TOKEN = {  # SmoothQuant everywhere; per-token steps where outlier tokens live
    **EMB,
    FFN_DOWN: {**A8, "smoothquant": 0.5, "act_granularity": "per_token"},
    "_default": {**A8, "smoothquant": 0.6},
}


def with_method(mapping: dict, method: str) -> dict:
    return {k: v if isinstance(v, QuantConfig) else QuantConfig(**v, method=method) for k, v in mapping.items()}


VARIANTS = {  # name -> (mapping, export to ONNX, time the ONNX file); every variant is timed in PyTorch
    "W8 weight-only": ({**EMB, "_default": QuantConfig()}, True, False),
    f"{WA} dynamic per-tensor": ({**EMB, "_default": QuantConfig(**A8)}, True, True),
    f"{WA} dynamic + SmoothQuant 0.6": ({**EMB, "_default": QuantConfig(**A8, smoothquant=0.6)}, True, False),
    f"{WA} SmoothQuant + per-token FFN-down, RTN": (with_method(SQ_TOKEN, "rtn"), True, False),
    f"{WA} SmoothQuant + per-token FFN-down, GPTQ": (with_method(SQ_TOKEN, "gptq"), True, True),
    f"{WA} per-token everywhere + SmoothQuant 0.5": (
        {**EMB, "_default": QuantConfig(**A8, smoothquant=0.5, act_granularity="per_token")},
        True,
        True,
    ),
    f"{WA} static (minmax) + SmoothQuant 0.6": (
        {**EMB, "_default": QuantConfig(weight_bits=BITS, activations="static", smoothquant=0.6)},
        True,
        True,
    ),
    "W4 g128 RTN": ({**EMB, "_default": QuantConfig(**W4)}, False, False),
    "W4A8 g128 GPTQ, per-token inputs (int8 GEMM per group)": (
        {**EMB, "_default": QuantConfig(**W4, method="gptq", activations="dynamic", act_granularity="per_token")},
        True,
        False,
    ),
    "W4 g128 GPTQ act-order (MatMulNBits)": (
        {**EMB, "_default": QuantConfig(**W4, method="gptq", gptq={"act_order": True})},
        True,
        True,
    ),
}


SIMULATED = f"{WA} SmoothQuant + per-token FFN-down, RTN"  # also timed on the reference path (as before)


def option(flag: str) -> str | None:
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else None


def selected() -> dict:
    wanted = option("--variants")
    if wanted is None:
        return VARIANTS
    return {k: v for k, v in VARIANTS.items() if any(w.strip() in k for w in wanted.split(";"))}


def cpu_line() -> str:
    f = cpu_features()
    flags = [n for n in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if getattr(f, n)]
    return f"CPU flags (`mmcompress.core.cpu`): {', '.join(flags) or 'none'}; integer weight bits chosen: {BITS}"


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(a, b)
    return float(cos.mean()), float(cos.min())


def ort_embed(path: Path, sentences: list[str]) -> torch.Tensor:
    session = OrtModel.from_path(path)
    return embed(session.run, sentences)


def accuracy(work: Path) -> tuple[list[list[str]], dict[str, tuple[str, str]]]:
    """Accuracy/size rows and the runtimes to time: name -> (worker kind, path)."""
    base = MiniLMEncoder().eval()
    sentences, calib = evaluation_sentences(), calibration_batches()
    with torch.no_grad():
        reference = embed(lambda b: base(**b), sentences)
    float_bytes = sum(4 * t.numel() for t in base.state_dict().values())
    speed_inputs = long_batch(32, 128)
    onnx = "--no-onnx" not in sys.argv
    runtimes = {"PyTorch float32 eager": ("torch-float", "-")}
    if onnx:
        export_onnx(copy.deepcopy(base), speed_inputs, work / "float.onnx")
        runtimes["ONNX Runtime float32"] = ("ort", str(work / "float.onnx"))
    rows = [["variant", "runtime", "mean cosine", "min cosine", "stored size vs float32"]]
    for i, (name, (mapping, exported, timed_too)) in enumerate(selected().items()):
        model = copy.deepcopy(base)
        quantize(model, mapping, calib=calib)
        model.eval()  # the 2026-11-29 PyTorch rows (0.95) ran models a float export had left in training mode
        size = f"{sum(stored_bytes(model).values()) / float_bytes:.3f}x"
        with torch.no_grad():
            mean, low = cosine(embed(lambda b, m=model: m(**b), sentences), reference)
        rows.append([f"ours: {name}", "PyTorch", f"{mean:.4f}", f"{low:.4f}", size])
        torch.save(model, work / f"ours_{i}.pt")  # pickled whole: kernel caches are left out
        runtimes[f"ours: {name} (PyTorch)"] = ("torch-file", str(work / f"ours_{i}.pt"))
        if name == SIMULATED:
            runtimes[f"ours: {name} (PyTorch, kernel 'simulate')"] = ("torch-file", f"{work / f'ours_{i}.pt'}:simulate")
        if exported and onnx:
            path = work / f"ours_{i}.onnx"
            export_onnx(copy.deepcopy(model), speed_inputs, path)
            mean, low = cosine(ort_embed(path, sentences), reference)
            rows.append([f"ours: {name}", "ONNX Runtime", f"{mean:.4f}", f"{low:.4f}", size])
            if timed_too:
                runtimes[f"ours: {name} (ONNX Runtime)"] = ("ort", str(path))
        print(rows[-1], flush=True)
    if "--no-peers" not in sys.argv:
        rows += peers(base, calib, sentences, reference, runtimes, work)
    return rows, runtimes


def peers(base, calib, sentences, reference, runtimes, work: Path) -> list[list[str]]:
    rows = []
    for name, build in TORCH_PEERS.items():
        model = build(base, calib).eval()
        with torch.no_grad():
            mean, low = cosine(embed(lambda b, m=model: m(**b), sentences), reference)
        rows.append([f"peer: {name}", "PyTorch", f"{mean:.4f}", f"{low:.4f}", "-"])
        runtimes[f"peer: {name}"] = ("torch-peer", name)
        print(rows[-1], flush=True)
    for i, (name, build) in enumerate(ONNX_PEERS.items()):
        path = work / f"peer_{i}.onnx"
        build(str(work / "float.onnx"), str(path), calib)
        mean, low = cosine(ort_embed(path, sentences), reference)
        rows.append([f"peer: {name}", "ONNX Runtime", f"{mean:.4f}", f"{low:.4f}", "-"])
        runtimes[f"peer: {name}"] = ("ort", str(path))
        print(rows[-1], flush=True)
    return rows


def gemm_models(work: Path) -> dict[str, tuple[str, str]]:
    """One FFN-sized Linear (384 -> 1536), float and A8 dynamic: the kernel-level ceiling."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(384, 1536))
    x = torch.randn(4096, 384)
    export_onnx(layer, x, work / "gemm_float.onnx")
    quantize(layer, QuantConfig(**A8))
    export_onnx(layer, x, work / "gemm_w7a8.onnx")
    return {
        "kernel: one 4096x384 @ 384x1536 GEMM, float32": ("ort-gemm", str(work / "gemm_float.onnx")),
        "kernel: same GEMM, u8s8 MatMulInteger (A8)": ("ort-gemm", str(work / "gemm_w7a8.onnx")),
    }


def timed(kind: str, path: str, batch: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_minilm_worker.py"), kind, path, str(batch), "128"],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["times"]


def speed(runtimes: dict[str, tuple[str, str]], batch: int, rounds: int = 3) -> list[list[str]]:
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name, (kind, path) in runtimes.items():
            times[name] += timed(kind, path, batch)
    stats = {name: summarize(t) for name, t in times.items()}
    ref = stats["PyTorch float32 eager"]["median"]
    rows = [["runtime", "median ms", "p10-p90 ms", "speed-up vs PyTorch float32"]]
    for name, s in stats.items():
        ratio = "-" if name.startswith("kernel") else f"{ref / s['median']:.2f}x"
        rows.append([name, f"{s['median']:.1f}", f"{s['p10']:.1f}-{s['p90']:.1f}", ratio])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    """`--reuse`: take the accuracy rows and ONNX files of the last run (in WORK) and only time."""
    saved = WORK / "accuracy.json"
    if "--reuse" in sys.argv and saved.exists():
        rows, runtimes = json.loads(saved.read_text())
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        rows, runtimes = accuracy(WORK)
        saved.write_text(json.dumps([rows, runtimes]))
    if "--accuracy-only" in sys.argv:
        return
    work = WORK
    kernels = gemm_models(work) if "--no-onnx" not in sys.argv else {}
    speed32 = speed({**runtimes, **kernels}, 32)
    speed1 = speed(runtimes, 1)
    body = (
        "## all-MiniLM-L6-v2 quantization (`benchmarks/minilm_int8.py`)\n\n"
        f"{machine()}. {cpu_line()}. Embedding cosine similarity to float32 on 504 sentences (the 304 captions "
        "and 200 prose sentences from the Python docs), embedded in batches of 32. Calibration "
        "(GPTQ, SmoothQuant, static ranges, peers): 256 other sentences (128 caption chains, 128 prose "
        "sentences the evaluation does not use). W4 rows: asymmetric steps per group of 128. Stored "
        "size: the compact file (packed codes, steps) against float32 weights. PyTorch rows run our "
        "quantized modules with kernel 'auto' (`mmcompress.quant.kernels`: oneDNN int8 GEMMs for W8A8 "
        "dynamic layers, a cached dequantized weight elsewhere).\n\n"
        f"{table(rows)}\n\n"
        "Batch 32 x 128 tokens; each runtime in its own process, 2 threads, 3 rounds in turn:\n\n"
        f"{table(speed32)}\n\n"
        "Batch 1 x 128 tokens:\n\n"
        f"{table(speed1)}\n"
    )
    partial = any(flag in sys.argv for flag in ("--variants", "--no-peers", "--no-onnx"))
    if partial:  # a subset must not replace the full tables: print them for a hand-written update
        (WORK / "partial_section.md").write_text(body)
    else:
        update_section("minilm-int8", body)
    print(body)


if __name__ == "__main__":
    main()
