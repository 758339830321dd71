"""fashion-clip's text tower (all-MiniLM-L6-v2, 6 layers) distilled into 3 layers (every 2nd layer
kept and initialised from the teacher, as DistilBERT did), then used in fashion-clip unchanged
otherwise (the same text projection): zero-shot accuracy and text-tower speed.

Run: .venv/bin/python benchmarks/distill_minilm_text.py            (accuracy; ~10 minutes)
     .venv/bin/python benchmarks/distill_minilm_text.py --speed    (speed only; run it alone)
Writes the `distill-minilm-text` section of docs/benchmarks.md (accuracy rows are kept in
/tmp/mmc-distill-bench/minilm_text.json so the speed run can rewrite the section).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _minilm_data import evaluation_sentences, short_sentences, tokenize, training_sentences
from _results import machine, table, time_calls, update_section

from mmcompress.data.registry import load_dataset
from mmcompress.distill import DistillConfig, distill, every_kth, keep_layers
from mmcompress.models.minilm import load_minilm_tokenizer
from mmcompress.models.zoo import load_model
from mmcompress.models.zoo_tasks import ContrastiveTask
from mmcompress.train.config import TrainConfig
from mmcompress.train.embedding_task import EmbeddingTask, Sentences

WORK = Path("/tmp/mmc-distill-bench")
STEPS = 600
KEEP = every_kth(6, 2)  # [1, 3, 5]


def variants() -> dict:
    """name -> DistillConfig (None: the 3-layer student without training)."""
    train = TrainConfig(epochs=1, batch_size=32, lr=1e-4, weight_decay=0.0, max_steps_per_epoch=STEPS, seed=0)
    layers = "bert.encoder.layer"
    hidden = {f"{layers}.{i}": f"{layers}.{t}" for i, t in enumerate(KEEP)}
    attn = {f"{layers}.{i}.attention": f"{layers}.{t}.attention" for i, t in enumerate(KEEP)}
    return {
        "3 layers, no training": None,
        "3 layers, embedding distillation": DistillConfig(mode="embedding", train=train),
        "3 layers, embedding + hidden states + attention maps": DistillConfig(
            mode="embedding", features=hidden, feature_weight=1.0, attentions=attn, attention_weight=1.0, train=train
        ),
    }


def accuracy_rows() -> list[list[str]]:
    clip = load_model("fashion-clip", progress=False)
    test = load_dataset("fashion-captions", "test")
    task = ContrastiveTask(clip, test)
    base = task.evaluate(clip, test)
    tokenizer = load_minilm_tokenizer()
    held_out = Sentences(evaluation_sentences()[len(short_sentences()) :])  # prose, never trained on
    probe = EmbeddingTask(tokenizer, reference=clip.text_tower)
    rows = [["text tower", "zero-shot", "of teacher", "retrieval p@10", "prose cosine", "distill s"]]
    rows.append(["6 layers (teacher)", f"{base['zero_shot_accuracy']:.4f}", "100.0%",
                 f"{base['retrieval_p@10']:.4f}", "1.0000", "-"])  # fmt: skip
    data = Sentences(training_sentences())
    for name, config in variants().items():
        student_text = keep_layers(clip.text_tower, KEEP)
        start = time.perf_counter()
        if config is not None:
            distill(clip.text_tower, student_text, data, config, task=EmbeddingTask(tokenizer, max_length=64),
                    progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        student = copy.deepcopy(clip)
        student.text_tower = student_text.eval()
        got = task.evaluate(student, test)
        cosine = probe.evaluate(student_text, held_out)["cosine"]
        rows.append([name, f"{got['zero_shot_accuracy']:.4f}",
                     f"{got['zero_shot_accuracy'] / base['zero_shot_accuracy']:.1%}", f"{got['retrieval_p@10']:.4f}",
                     f"{cosine:.4f}", "-" if config is None else f"{seconds:.0f}"])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def speed_rows() -> list[list[str]]:
    clip = load_model("fashion-clip", progress=False)
    towers = {"6 layers": clip.text_tower.eval(), "3 layers": keep_layers(clip.text_tower, KEEP).eval()}
    inputs = {
        "32 captions (padded to 15 tokens)": tokenize(short_sentences()[:32]),
        "32 x 128 tokens": tokenize([", then ".join(short_sentences()[i : i + 12]) for i in range(32)], 128),
    }
    rows = [["input", "6 layers ms", "3 layers ms", "speed-up"]]
    for label, batch in inputs.items():
        times = {name: [] for name in towers}
        for _ in range(3):  # rounds in turn, so drift hits both alike
            for name, tower in towers.items():
                times[name].append(time_calls(lambda t=tower, b=batch: t(**b), warmup=3, repeats=20)["median"])
        six, three = min(times["6 layers"]), min(times["3 layers"])
        rows.append([label, f"{six:.1f}", f"{three:.1f}", f"{six / three:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speed", action="store_true", help="measure speed only (keep the saved accuracy rows)")
    args = parser.parse_args()
    saved = WORK / "minilm_text.json"
    if args.speed:
        acc = json.loads(saved.read_text()) if saved.exists() else None
        speed = speed_rows()
    else:
        acc, speed = accuracy_rows(), None
        WORK.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(acc))
    body = (
        "## fashion-clip's text tower distilled from 6 to 3 layers (`benchmarks/distill_minilm_text.py`)\n\n"
        f"{machine()}. Student: layers 2, 4 and 6 of all-MiniLM-L6-v2 (weights copied); "
        f"{STEPS} steps of 32 sentences (AdamW lr 1e-4), loss 1 - cosine of the sentence embeddings "
        "to the teacher's (plus, in the last row, MSE of each kept layer's hidden states to the teacher "
        "layer it came from and KL of its attention maps). Training sentences: chains of 2-4 captions "
        "and Python-docs prose (no single caption, so never the zero-shot prompts themselves). The "
        "student replaces the text tower of the trained fashion-clip (same projection, no "
        "fine-tuning); zero-shot accuracy on the 10,000 test images; prose cosine: 200 held-out "
        "prose sentences against the teacher.\n\n"
    )
    body += table(acc) + "\n" if acc else "(accuracy rows: run without --speed)\n"
    if speed:
        body += (
            f"\nText tower latency, PyTorch eager, median of 20 calls, best of 3 rounds in turn:\n\n{table(speed)}\n"
        )
    update_section("distill-minilm-text", body)
    print(body)


if __name__ == "__main__":
    main()
