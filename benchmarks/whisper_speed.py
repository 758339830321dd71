"""Whisper tiny.en greedy decoding of the 10 real pocketsphinx clips: time and WER, float vs
compressed in PyTorch (optionally with the encoder in ONNX Runtime) vs CTranslate2 float32/int8.

Run: .venv/bin/python benchmarks/whisper_speed.py [--rounds 2] [--variants a,b] [--no-write]
Every variant runs in its own process (2 threads); rounds alternate the variants so machine drift
hits them alike; the time is the whole transcription of the 10 clips (encoder + greedy decoder),
median over rounds, after one warm-up clip. PyTorch variants decode with mmcompress's static-cache
greedy loop (`mmcompress.audio.greedy`, the tokens `generate` gives) unless named "generate".
Writes the `whisper-speed` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import machine, table, update_section

INT_ENCODER = {"weight_bits": "auto", "activations": "dynamic"}  # 8 bits, 7 on AVX2 without VNNI (no saturation)
W8_INT = {  # 8-bit weights everywhere; the encoder's 1500-row products on int8 GEMMs (dynamic inputs)
    "re:model\\.encoder\\..*": INT_ENCODER,
    "_default": {"weight_bits": 8},
}
W8_INT8 = {  # W8_INT with 8-bit encoder codes on every CPU (AVX2 without VNNI: torch._int_mm, not oneDNN)
    "re:model\\.encoder\\..*": {"weight_bits": 8, "activations": "dynamic"},
    "_default": {"weight_bits": 8},
}
W8A8 = {
    "re:.*embed_tokens": {"weight_bits": 8},
    "_default": {"weight_bits": 8, "activations": "dynamic", "act_granularity": "per_token"},
}
W4 = {
    "re:.*embed_tokens|.*proj_out": {"weight_bits": 8},
    "_default": {"weight_bits": 4, "granularity": "per_group", "group_size": 128, "scheme": "asymmetric"},
}
W4_INT = {  # W4 g128 decoder; the encoder W8A8 on int8 GEMMs (dynamic per-tensor inputs)
    "re:.*embed_tokens|.*proj_out": {"weight_bits": 8},
    "re:model\\.encoder\\..*": INT_ENCODER,
    "_default": W4["_default"],
}
W4A8 = {  # W4 g128 everywhere (token table 8-bit); the encoder's inputs int8 (dynamic): one int8 GEMM per group
    "re:.*embed_tokens|.*proj_out": {"weight_bits": 8},
    "re:model\\.encoder\\..*": {**W4["_default"], "activations": "dynamic"},
    "_default": W4["_default"],
}
BF16 = "bfloat16"
VARIANTS = {  # name -> (description, quantization targets or None, encoder on ONNX Runtime, decoder, attention)
    "float-generate": ("PyTorch float32, transformers `generate`", None, False, "generate", None),
    "float": ("PyTorch float32", None, False, "greedy", None),
    "float-bf16": ("float32, encoder attention in bf16", None, False, "greedy", BF16),
    "w8": ("W8 weight-only (all Linear, token table 8-bit)", {"_default": {"weight_bits": 8}}, False, "greedy", None),
    "w8-int": (
        "W8, encoder Linear on int8 GEMMs (dynamic per-tensor inputs, auto bits)",
        W8_INT,
        False,
        "greedy",
        None,
    ),
    "w8-int-8bit": ("W8, encoder on int8 GEMMs with 8-bit codes everywhere", W8_INT8, False, "greedy", None),
    "w8-int-bf16": ("W8, encoder on int8 GEMMs, encoder attention in bf16", W8_INT, False, "greedy", BF16),
    "w8-int-generate": ("W8, encoder on int8 GEMMs, transformers `generate`", W8_INT, False, "generate", None),
    "w8a8": ("W8A8 dynamic per-token (Linear), token table 8-bit", W8A8, False, "greedy", None),
    "w4": ("W4 g128 RTN (Linear), token table 8-bit", W4, False, "greedy", None),
    "w4-int": ("W4 g128 decoder, W8A8 encoder (int8 GEMMs)", W4_INT, False, "greedy", None),
    "w4-int-bf16": ("W4 g128 decoder, W8A8 encoder, encoder attention in bf16", W4_INT, False, "greedy", BF16),
    "w4a8": ("W4A8 g128: 4-bit weights, encoder inputs int8 (int8 GEMM per group)", W4A8, False, "greedy", None),
    "w4a8-bf16": ("W4A8 g128, encoder attention in bf16", W4A8, False, "greedy", BF16),
    "float+ort": ("float32 decoder, encoder in ONNX Runtime", None, True, "greedy", None),
    "w8+ort": ("W8 decoder, int8 encoder in ONNX Runtime", {"_default": {"weight_bits": 8}}, True, "greedy", None),
    "ct2-float32": ("CTranslate2 float32", None, False, None, None),
    "ct2-int8": ("CTranslate2 int8 (peer)", None, False, None, None),
}


def _worker(name: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from mmcompress.audio.speech import load_real_speech, transcribe, word_error_rate

    speech = load_real_speech()
    refs = [u.text for u in speech]
    if name.startswith("ct2-"):
        from mmcompress.audio.ct2 import ct2_transcribe
        from mmcompress.models.hf.whisper_ct2 import packaged_whisper_path

        compute = name.split("-", 1)[1]
        run = lambda clips: ct2_transcribe(packaged_whisper_path(), clips, compute_type=compute, threads=threads)  # noqa: E731
    else:
        import mmcompress
        from mmcompress.models.hf.speech_ort import encoder_on_onnxruntime

        _, targets, on_ort, decoder, attention = VARIANTS[name]
        model = mmcompress.load_model("hf:whisper-tiny.en").eval()
        if targets is not None:
            mmcompress.quantize(model, targets)
        if on_ort:
            encoder_on_onnxruntime(model, Path(tempfile.mkdtemp()) / "encoder.onnx", threads=threads)
        run = lambda clips: transcribe(model, clips, decoder=decoder, attention_dtype=attention)  # noqa: E731
    run(speech[:1])  # warm-up
    start = time.perf_counter()
    texts = run(speech)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "wer": word_error_rate(refs, texts),
        "wer_normalized": word_error_rate(refs, texts, normalize=True),
    }


def _measure(names: list[str], rounds: int, threads: int) -> dict[str, dict]:
    got: dict[str, dict] = {n: {"seconds": []} for n in names}
    for _ in range(rounds):
        for name in names:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--threads", str(threads)],
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            got[name]["seconds"].append(row["seconds"])
            got[name].update(wer=row["wer"], wer_normalized=row["wer_normalized"])
            print(name, row, flush=True)
    return got


def _render(got: dict[str, dict], threads: int, flags: str) -> str:
    def median(name: str) -> float | None:
        return statistics.median(got[name]["seconds"]) if name in got else None

    base, generate, ct2 = median("float"), median("float-generate"), median("ct2-int8")
    rows = [["variant", "seconds (10 clips)", "vs float32 (same decoder loop)", "vs float32 `generate`",
             "vs ct2 int8 time", "WER", "normalized WER"]]  # fmt: skip
    for name, row in got.items():
        sec = median(name)
        same = base if VARIANTS[name][3] == "greedy" else generate if VARIANTS[name][3] == "generate" else None
        ratios = [f"{ref / sec:.2f}x" if ref else "-" for ref in (same, generate)]
        vs_ct2 = f"{sec / ct2:.2f}x" if ct2 else "-"
        wers = f"{row['wer']:.3f}", f"{row['wer_normalized']:.3f}"
        rows.append([VARIANTS[name][0], f"{sec:.2f}", *ratios, vs_ct2, *wers])
    return (
        "## Whisper tiny.en decoding speed (`benchmarks/whisper_speed.py`)\n\n"
        f"{machine()}; CPU flags: {flags}. Greedy decoding of the 10 real pocketsphinx clips "
        f"(encoder + decoder), {threads} threads, each variant in its own process, median of "
        f"{len(next(iter(got.values()))['seconds'])} alternating rounds after one warm-up clip. PyTorch "
        "rows decode with `mmcompress.audio.transcribe`'s static-cache greedy loop (the tokens "
        '`generate` gives) unless they say `generate`; "same decoder loop" compares with float32 '
        'decoded the same way, "vs float32 `generate`" with what a transformers user runs today. '
        "\"vs ct2 int8 time\" is this variant's time over CTranslate2 int8's (the target is <= 1.5x).\n\n" + table(rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.threads)))
        return
    from mmcompress.core.cpu import cpu_features

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    got = _measure(names, args.rounds, args.threads)
    flags = [k for k, v in cpu_features().to_dict().items() if v is True]
    text = _render(got, args.threads, ", ".join(flags))
    print(text)
    if not args.no_write:
        update_section("whisper-speed", text)


if __name__ == "__main__":
    main()
