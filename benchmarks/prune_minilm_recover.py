"""all-MiniLM-L6-v2 pruned to 50% (unstructured and 2:4) by SparseGPT, then repaired by embedding
distillation from the dense model with the masks kept (issue 5's trainer, `mode="embedding"`).

Run: .venv/bin/python benchmarks/prune_minilm_recover.py [--steps 300] [--only sparsegpt-50]
Writes the `prune-minilm-recover` section of docs/benchmarks.md.

Training sentences are disjoint from the 504 evaluation sentences: chains of 2 to 4 captions
joined by a connective (the evaluation uses single captions) and prose sentences from the Python
docs that the evaluation and calibration do not use. Cosine is reported on the whole evaluation
set and on its caption / prose halves separately.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _minilm_data import calibration_batches, embed, evaluation_sentences, short_sentences, training_sentences
from _results import machine, table, update_section

from mmcompress.distill import DistillConfig, distill
from mmcompress.models.minilm import MiniLMEncoder, load_minilm_tokenizer
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.train.config import TrainConfig
from mmcompress.train.embedding_task import EmbeddingTask, Sentences

RUNS = {
    "sparsegpt-50": ("sparsegpt", "unstructured"),
    "sparsegpt-2:4": ("sparsegpt", "2:4"),
    "wanda-50": ("wanda", "unstructured"),
}


def cosines(model, reference: torch.Tensor, sentences: list[str]) -> list[float]:
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(embed(lambda b: model(**b), sentences), reference)
    n_captions = len(short_sentences())
    return [float(cos.mean()), float(cos.min()), float(cos[:n_captions].mean()), float(cos[n_captions:].mean())]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", choices=list(RUNS), action="append")
    args = parser.parse_args()
    base = MiniLMEncoder().eval()
    sentences, calib = evaluation_sentences(), calibration_batches()
    with torch.no_grad():
        reference = embed(lambda b: base(**b), sentences)
    train_texts = training_sentences()
    task = EmbeddingTask(load_minilm_tokenizer(), max_length=64)
    batch = 32
    epochs = max(1, round(args.steps * batch / len(train_texts)))
    steps_per_epoch = -(-args.steps // epochs)
    train = TrainConfig(
        epochs=epochs, batch_size=batch, lr=5e-5, weight_decay=0.0, max_steps_per_epoch=steps_per_epoch, seed=0
    )
    rows = [["pruned (encoder Linear layers)", "stage", "mean cosine", "min cosine", "captions", "prose", "seconds"]]
    for name in args.only or list(RUNS):
        method, pattern = RUNS[name]
        model = copy.deepcopy(base)
        start = time.perf_counter()
        scope = "row" if method == "wanda" else "layer"
        prune(model, {"re:.*encoder.*": PruneConfig(sparsity=0.5, method=method, pattern=pattern, scope=scope)},
              data=calib)  # fmt: skip
        label = f"{method}, {'50%' if pattern == 'unstructured' else '2:4'}"
        rows.append([label, "pruned", *(f"{c:.4f}" for c in cosines(model, reference, sentences)),
                     f"{time.perf_counter() - start:.0f}"])  # fmt: skip
        print(rows[-1], flush=True)
        start = time.perf_counter()
        config = DistillConfig(mode="embedding", train=train)
        distill(base, model, Sentences(train_texts), config, task=task, progress=False)
        masked = [m.weight for m in model.modules() if hasattr(m, "weight_mask")]
        sparsity = sum(int((w == 0).sum()) for w in masked) / sum(w.numel() for w in masked)
        stage = f"+ {train.epochs * steps_per_epoch} distillation steps (sparsity {sparsity:.3f})"
        after = [f"{c:.4f}" for c in cosines(model, reference, sentences)]
        rows.append([label, stage, *after, f"{time.perf_counter() - start:.0f}"])
        print(rows[-1], flush=True)
    body = (
        "## Repairing pruned all-MiniLM-L6-v2 by embedding distillation (`benchmarks/prune_minilm_recover.py`)\n\n"
        f"{machine()}. Pruned as in the section above, then trained against the dense model "
        f"(loss 1 - cosine of the sentence embeddings, AdamW lr 5e-5, batches of {batch} sentences of "
        f"up to 64 tokens, masks kept after every step) on {len(train_texts):,} sentences disjoint from "
        "the 504 evaluation sentences: chains of 2-4 captions and Python-docs prose the evaluation and "
        "calibration do not use. Cosine to float32 on all 504 sentences, and on the 304 captions and "
        "200 prose sentences separately.\n\n"
        f"{table(rows)}\n"
    )
    update_section("prune-minilm-recover", body)
    print(body)


if __name__ == "__main__":
    main()
