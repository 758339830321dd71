"""Heads pruned with `reconstruct`: the output projection's kept columns are refit by least squares
on calibration batches, so a removed head whose output a kept head duplicates costs nothing, and a
replayed record rebuilds the same model."""

from __future__ import annotations

import copy

import torch

from mmcompress import prune_structured
from mmcompress.core.record import Record
from mmcompress.models.adapter import adapter_for
from mmcompress.models.hf.tiny import tiny_model
from mmcompress.prune.structured import replay_structured

TWINS = {1: 0, 3: 2}  # head -> the kept head whose output it copies (its q/k/v rows are the same)


def _twin_heads():
    """Tiny Whisper whose heads 1 and 3 duplicate heads 0 and 2 with weaker output columns."""
    torch.manual_seed(0)
    model = tiny_model("whisper").eval()
    with torch.no_grad():
        for name, attention in model.named_modules():
            if not name.endswith("attn"):
                continue
            d = attention.head_dim
            for copy_of, source in TWINS.items():
                for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
                    proj.weight[copy_of * d : (copy_of + 1) * d] = proj.weight[source * d : (source + 1) * d]
                    if proj.bias is not None:
                        proj.bias[copy_of * d : (copy_of + 1) * d] = proj.bias[source * d : (source + 1) * d]
                attention.out_proj.weight[:, copy_of * d : (copy_of + 1) * d] *= 0.3  # ranked last by magnitude
    return model


def _pruned(reconstruct: bool, calib: list):
    model = _twin_heads()
    config = {"ratio": 0.5, "unit": "heads", "method": "magnitude", "reconstruct": reconstruct}
    record = prune_structured(model, {"_default": config}, calib=calib)
    return model, record


def test_reconstruct_moves_a_removed_twin_head_onto_its_kept_copy_and_replays():
    torch.manual_seed(1)
    reference = _twin_heads()
    adapter = adapter_for(reference)
    calib, test = [adapter.example_inputs(2) for _ in range(3)], adapter.example_inputs(2)
    with torch.no_grad():
        expected = reference(**test).logits
        errors = {}
        for reconstruct in (False, True):
            model, record = _pruned(reconstruct, calib)
            assert all(e["keep"] == [0, 2] for e in record.modules.values() if e["structure"] == "heads")
            errors[reconstruct] = float((model(**test).logits - expected).pow(2).mean())
    assert errors[True] < 0.02 * errors[False], errors  # 220x lower here (the ridge keeps it from 0)
    assert {e["compensation"][f"{n}.out_proj"] for n, e in record.modules.items()} == {"bias"}
    fresh = copy.deepcopy(reference)
    replay_structured(fresh, Record.from_dict(record.to_dict()))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(**test).logits, model(**test).logits)


def test_bare_encoder_heads_scored_by_ablation_and_refit():
    """A BertModel returns hidden states, not logits: ablation compares those."""
    import pytest

    from mmcompress.prune.structured import StructuredConfig

    model = tiny_model("bert")
    calib = [adapter_for(model).example_inputs(2) for _ in range(2)]
    config = {"ratio": 0.5, "unit": "heads", "method": "ablation", "ablation_batches": 1, "reconstruct": True}
    record = prune_structured(model, {"_default": config}, calib=calib)
    assert {e["kept"] for e in record.modules.values() if e["structure"] == "heads"} == {2}
    assert all(e["reconstructed"] for e in record.modules.values() if e["structure"] == "heads")
    with pytest.raises(ValueError, match="ablation_batches applies to method 'ablation'"):
        StructuredConfig(ratio=0.5, ablation_batches=1)
