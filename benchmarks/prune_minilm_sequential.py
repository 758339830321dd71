"""all-MiniLM-L6-v2 at 50% unstructured sparsity by SparseGPT with sequential calibration (layers
pruned in forward order, each calibrated on the inputs of the already-pruned model).

Run: .venv/bin/python benchmarks/prune_minilm_sequential.py   (about 5 minutes on 2 cores)
Writes the `prune-minilm-sequential` section of docs/benchmarks.md (same sentences and
calibration as benchmarks/prune_minilm.py).
"""

from __future__ import annotations

import copy
import time

import torch
from _minilm_data import calibration_batches, embed, evaluation_sentences
from _results import machine, table, update_section

from mmcompress.models.minilm import MiniLMEncoder
from mmcompress.prune.api import PruneConfig, prune


def main() -> None:
    base = MiniLMEncoder().eval()
    sentences, calib = evaluation_sentences(), calibration_batches()
    with torch.no_grad():
        reference = embed(lambda b: base(**b), sentences)
    rows = [["SparseGPT, 50% of encoder Linear weights", "mean cosine", "min cosine", "seconds"]]
    for sequential in (False, True):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        prune(model, {"re:.*encoder.*": PruneConfig(sparsity=0.5, method="sparsegpt", sequential=sequential,
                                                     scope="layer")}, data=calib)  # fmt: skip
        seconds = time.perf_counter() - start
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(embed(lambda b, m=model: m(**b), sentences), reference)
        label = "sequential calibration" if sequential else "every layer on float inputs"
        rows.append([label, f"{float(cos.mean()):.4f}", f"{float(cos.min()):.4f}", f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    body = (
        "## SparseGPT with sequential calibration on all-MiniLM-L6-v2 (`benchmarks/prune_minilm_sequential.py`)\n\n"
        f"{machine()}. No retraining; the sentences and calibration of the pruning section above.\n\n"
        f"{table(rows)}\n"
    )
    update_section("prune-minilm-sequential", body)
    print(body)


if __name__ == "__main__":
    main()
