"""MobileNetV2 (real ImageNet weights) quantization on 300 real photo crops: agreement with the
float model, KL, stored size and deployed ONNX file size; ONNX Runtime's quantize_static as peer.

Run: .venv/bin/python benchmarks/mobilenet_v2.py [--only SUBSTRING,...] [--no-write]   (several minutes; run it alone)
Writes the `mobilenet-v2` section of docs/benchmarks.md (not with --only or --no-write).

`--speed [--rounds N] [--threads T]`: ONNX Runtime latency at batch 1 and 32 of the float file, ONNX
Runtime's quantize_static (QDQ, per-channel, same calibration crops), mmcompress W8A8 static (QDQ
and the bit-exact integer form) and W8 weight-only, each file timed in its own process, the files
alternating round by round; writes the `mobilenet-v2-speed` block inside the section.

The best W8A8 static recipe measured here (issue 14): fold BatchNorm -> `equalize_cross_layer` ->
`quantize(QuantConfig(activations="static", act_observer="percentile", method="gptq"))`, without
bias correction (empirical bias correction on top of clipped activation ranges made it worse).
"""

from __future__ import annotations

import argparse
import copy
import re
import tempfile
import warnings
from pathlib import Path

import torch
from _mobilenet_speed import cpu_flags, scratch_dir, speed_table
from _results import DOC, machine, table, update_section

from mmcompress.data.photos import photo_crops
from mmcompress.evaluate.measure import measure
from mmcompress.evaluate.metrics import mean_kl, top1_agreement
from mmcompress.graph.export import export_onnx
from mmcompress.graph.folding import fold_batchnorm
from mmcompress.graph.runtime import OrtModel
from mmcompress.models.mobilenet_v2 import load_mobilenet_v2
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.equalize import correct_bias, equalize_cross_layer
from mmcompress.quant.tune import TuneConfig, tune_quantized

N_TEST, N_CALIB, BATCH = 300, 64, 50


@torch.no_grad()
def logits(model, x):
    return torch.cat([model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def ort_logits(path, x):
    session = OrtModel.from_path(path, threads=2)
    return torch.cat([torch.from_numpy(session.run({"input": x[i : i + BATCH]})[0]) for i in range(0, len(x), BATCH)])


def variant(base, folded, cle, cfg, calib, bias_correction):
    """cle: False, True / "clamp" (exact per-channel clamps) or "relu" (ReLU6 -> ReLU on the chains)."""
    reference = copy.deepcopy(base)
    if folded:
        fold_batchnorm(reference)
    if cle:
        equalize_cross_layer(reference, relu6="relu" if cle == "relu" else "clamp")
    model = copy.deepcopy(reference)
    quantize(model, cfg, calib=[calib[i : i + 4] for i in range(0, len(calib), 4)])
    if bias_correction:
        correct_bias(model, reference, [calib])
    return model


def tuned(model, teacher, crops: int = 4096, target: str = "onnx-qdq"):
    """`tune_quantized` on other crops of the photos (a stream disjoint from the test and calibration
    crops), by default through the roundings of the QDQ file that ships (`quant.qdq_simulation`)."""
    train = photo_crops(crops, seed=5, split="calib")
    tune_quantized(model, teacher, [train[i : i + 16] for i in range(0, crops, 16)], TuneConfig(target=target))
    return model


def ort_peer(float_path: Path, out: Path, calib) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i : i + 4].numpy()} for i in range(0, len(calib), 4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return out


SPEED = "mobilenet-v2-speed"


def speed(base, test, calib, rounds: int, threads: int, write: bool) -> None:
    """Latency of the deployed files side by side, and each file's top-1 agreement with float PyTorch."""
    tmp = scratch_dir(test)
    ref = logits(base, test)
    export_onnx(base, test[:4], tmp / "float.onnx")
    pct = QuantConfig(activations="static", method="gptq", act_observer="percentile")
    w8a8 = {  # file name -> model: fold BatchNorm + GPTQ + percentile ranges, with or without CLE
        "W8A8 static (QDQ)": variant(base, True, False, pct, calib, False),
        "W8A8 static + CLE, ReLU6 -> ReLU (QDQ)": variant(base, True, "relu", pct, calib, False),
        "W8A8 static + CLE, exact clamps (QDQ)": variant(base, True, "clamp", pct, calib, False),
        "W8A8 static + distillation tuning (QDQ)": tuned(variant(base, True, False, pct, calib, False), base),
    }
    w8 = variant(base, True, False, QuantConfig(method="gptq"), calib, True)
    files = {
        "float": tmp / "float.onnx",
        "ORT quantize_static (QDQ, per-channel)": ort_peer(tmp / "float.onnx", tmp / "ort_static.onnx", calib),
    }
    for i, (name, model) in enumerate(w8a8.items()):
        files[f"mmcompress {name}"] = tmp / f"w8a8_{i}.onnx"
        export_onnx(model, test[:8], files[f"mmcompress {name}"])
    first = next(iter(w8a8))
    files["mmcompress W8A8 static (integer, bit-exact)"] = tmp / "w8a8_integer.onnx"
    export_onnx(w8a8[first], test[:8], files["mmcompress W8A8 static (integer, bit-exact)"], static_format="integer")
    files["mmcompress W8 weight-only"] = tmp / "w8.onnx"
    export_onnx(w8, test[:8], files["mmcompress W8 weight-only"])
    outs = {name: ort_logits(path, test) for name, path in files.items()}
    agreement = {name: f"{top1_agreement(ref, out):.3f}" for name, out in outs.items()}
    pytorch = {name: logits(model, test) for name, model in w8a8.items()}
    pytorch["W8A8 static (integer, bit-exact)"] = pytorch[first]
    parity = {n: top1_agreement(pytorch[n], outs[f"mmcompress {n}"]) for n in pytorch}
    print(agreement, parity, flush=True)
    rows = speed_table(files, agreement, rounds, threads)
    body = (
        f"### Speed on ONNX Runtime (`benchmarks/mobilenet_v2.py --speed`)\n\n"
        f"{machine()}; ONNX Runtime sessions with {threads} intra-op thread(s), graph optimizations 'all'; "
        f"CPU flags: {cpu_flags()}. Each file is timed in its own process (warm-up, then the median of >= 3 s "
        f"of calls), the files alternating in each of {rounds} rounds; the table gives the median of the round "
        f"medians and their range. Agreement: top-1 agreement with the "
        f"float PyTorch model on the {N_TEST} test crops (the same crops and {N_CALIB} calibration crops for "
        "every quantizer). W8A8 = fold BatchNorm + GPTQ, percentile input ranges (+ cross-layer "
        "equalization where named; distillation tuning: `tune_quantized` with `target='onnx-qdq'` (through "
        "the QDQ file's roundings), 300 steps on 4096 other crops); "
        "W8 = GPTQ + bias correction. Top-1 agreement of each W8A8 file with "
        "its PyTorch model: " + ", ".join(f"{n} {v:.3f}" for n, v in parity.items()) + ".\n\n"
        f"{table(rows)}\n"
    )
    print(body)
    if write:
        _write_speed(body)


def _write_speed(body: str) -> None:
    """The speed block lives inside the mobilenet-v2 section (added at its end the first time)."""
    text = DOC.read_text()
    if f"<!-- {SPEED} -->" in text:
        update_section(SPEED, body)
        return
    section = re.search(r"<!-- mobilenet-v2 -->\n(.*?)\n<!-- /mobilenet-v2 -->", text, re.S)
    block = f"<!-- {SPEED} -->\n{body.strip()}\n<!-- /{SPEED} -->"
    update_section("mobilenet-v2", (section.group(1) if section else "") + "\n\n" + block)


def _with_speed_block(body: str) -> str:
    """The accuracy body plus the speed block already in the doc (so rewriting one keeps the other)."""
    found = re.search(rf"<!-- {SPEED} -->.*?<!-- /{SPEED} -->", DOC.read_text() if DOC.exists() else "", re.S)
    return body if found is None else body.rstrip() + "\n\n" + found.group(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="comma-separated substrings of variant names (float and ORT always run)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    parser.add_argument("--speed", action="store_true", help="time the ONNX files instead (batch 1 and 32)")
    parser.add_argument("--rounds", type=int, default=5, help="--speed: rounds of alternating timings")
    parser.add_argument("--threads", type=int, default=1, help="--speed: ONNX Runtime intra-op threads per session")
    args = parser.parse_args()
    wanted = [w for w in args.only.split(",") if w]
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    test, calib = photo_crops(N_TEST, split="test"), photo_crops(N_CALIB, split="calib")
    base = load_mobilenet_v2()
    if args.speed:
        speed(base, test, calib, args.rounds, args.threads, write=not args.no_write)
        return
    ref = logits(base, test)
    tmp = Path(tempfile.mkdtemp())
    rows = [["variant", "top-1 agreement", "mean KL", "measure bytes", "ONNX file bytes", "ORT vs PyTorch top-1"]]

    def add(name, build, onnx_too=False):
        if wanted and name != "float" and not any(w in name for w in wanted):
            return
        model = build()
        out = logits(model, test)
        size = measure(model).total.stored_bytes
        file_cells = ["", ""]
        if onnx_too:
            res = export_onnx(model, test[:8], tmp / "m.onnx")
            deployed = ort_logits(tmp / "m.onnx", test)
            file_cells = [f"{res.file_bytes:,}", f"{top1_agreement(out, deployed):.3f}"]
            rows.append([f"{name}, ONNX Runtime artifact", f"{top1_agreement(ref, deployed):.3f}",
                         f"{mean_kl(ref, deployed):.4f}", f"{size:,}", *file_cells])  # fmt: skip
        rows.insert(len(rows) - onnx_too, [name, f"{top1_agreement(ref, out):.3f}", f"{mean_kl(ref, out):.4f}",
                                           f"{size:,}", *file_cells])  # fmt: skip
        print(rows[-1], flush=True)

    add("float", lambda: base)
    w8 = QuantConfig()
    static = QuantConfig(activations="static")
    add("W8 RTN (reported issue)", lambda: variant(base, False, False, w8, calib, False), onnx_too=True)
    add("W8 RTN + bias correction", lambda: variant(base, True, False, w8, calib, True))
    add("W8 GPTQ + bias correction", lambda: variant(base, True, False, QuantConfig(method="gptq"), calib, True), True)
    add("W8A8 static RTN (BN not folded)", lambda: variant(base, False, False, static, calib, False), onnx_too=True)
    add("W8A8 static RTN, folded", lambda: variant(base, True, False, static, calib, False), onnx_too=True)
    gptq_static = QuantConfig(activations="static", method="gptq")
    add("W8A8 static GPTQ + CLE + bias correction", lambda: variant(base, True, True, gptq_static, calib, True), True)
    pct = QuantConfig(activations="static", method="gptq", act_observer="percentile")
    add("W8A8 static GPTQ + CLE, percentile ranges", lambda: variant(base, True, True, pct, calib, False), True)
    export_onnx(base, test[:4], tmp / "float.onnx")
    peer = ort_peer(tmp / "float.onnx", tmp / "ort_static.onnx", calib)
    deployed = ort_logits(peer, test)
    rows.append(["ORT quantize_static (QDQ, per-channel, MinMax)", f"{top1_agreement(ref, deployed):.3f}",
                 f"{mean_kl(ref, deployed):.4f}", "", f"{peer.stat().st_size:,}", ""])  # fmt: skip
    print(rows[-1], flush=True)
    body = (
        "## MobileNetV2 quantization on real photo crops (`benchmarks/mobilenet_v2.py`)\n\n"
        f"{machine()}. torchvision's ImageNet MobileNetV2; {N_TEST} test crops and {N_CALIB} disjoint "
        "calibration crops (`mmcompress.data.photos.photo_crops`: random resized crops + flips of the six "
        "bundled sample photos, disjoint random streams). Agreement = top-1 agreement with the float model; "
        "KL = mean KL(float || quantized). Rows named 'ONNX Runtime artifact' evaluate the exported file; "
        "'ORT vs PyTorch top-1' is the file's agreement with the PyTorch model it came from.\n\n"
        f"{table(rows)}\n"
    )
    if not (wanted or args.no_write):
        update_section("mobilenet-v2", _with_speed_block(body))
    print(body)


if __name__ == "__main__":
    main()
