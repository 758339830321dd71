"""Tied weights (Whisper's proj_out = decoder.embed_tokens): found, quantized once, stored once,
counted once, never smoothed through the other module, and tied again on loading."""

from __future__ import annotations

import copy

import pytest
import torch

from mmcompress import quantize
from mmcompress.core.shared_params import modules_sharing_weight, shared_tensor_groups, tensor_key
from mmcompress.evaluate.measure import measure
from mmcompress.graph.quant_files import load_quantized, save_quantized
from mmcompress.graph.storage import load_compact, save_compact, stored_bytes
from mmcompress.models.adapter import adapter_for
from mmcompress.models.hf.tiny import tiny_model

EMB, HEAD = "model.decoder.embed_tokens", "proj_out"
HEADER_SLACK = 64 * 1024  # safetensors header + JSON layout of a few hundred tensors


@pytest.fixture
def whisper():
    return tiny_model("whisper").eval()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return tensor_key(a) == tensor_key(b)


def test_shared_parameters_are_found(whisper):
    assert [f"{EMB}.weight", f"{HEAD}.weight"] in shared_tensor_groups(whisper)
    assert modules_sharing_weight(whisper)[HEAD] == [EMB]
    untied = copy.deepcopy(whisper)
    untied.proj_out.weight = torch.nn.Parameter(untied.proj_out.weight.detach().clone())
    assert HEAD not in modules_sharing_weight(untied)


def test_w8_quantizes_the_tied_matrix_once_and_stores_and_counts_it_once(whisper, tmp_path):
    vocab, width = whisper.proj_out.weight.shape
    untied = copy.deepcopy(whisper)
    untied.proj_out.weight = torch.nn.Parameter(untied.proj_out.weight.detach().clone())
    record = quantize(whisper, {"weight_bits": 8})
    quantize(untied, {"weight_bits": 8})
    emb, head = whisper.get_submodule(EMB), whisper.proj_out
    assert _same(emb.qweight, head.qweight) and _same(emb.scale, head.scale)
    assert record.modules[HEAD]["tied_to"] == EMB
    saved = sum(stored_bytes(untied).values()) - sum(stored_bytes(whisper).values())
    assert saved >= vocab * width  # the int8 copy (and its steps) is gone
    m = measure(whisper, repeats=1, warmup=0)
    assert m.total.params == measure(tiny_model("whisper"), repeats=1, warmup=0).total.params
    path = save_compact(whisper, tmp_path / "w8.safetensors")
    assert 0 <= path.stat().st_size - m.total.stored_bytes < HEADER_SLACK
    state, _ = load_compact(path)
    assert torch.equal(state[f"{HEAD}.qweight"], state[f"{EMB}.qweight"])


def test_saved_quantized_whisper_loads_tied_and_bit_exact(whisper, tmp_path):
    x = adapter_for(whisper).example_inputs(2)
    quantize(whisper, {"_default": {"weight_bits": 4, "granularity": "per_group", "group_size": 16}})
    with torch.no_grad():
        want = whisper(**x).logits
    save_quantized(whisper, tmp_path / "w4")
    loaded = load_quantized(tiny_model("whisper"), tmp_path / "w4")
    assert _same(loaded.proj_out.qweight, loaded.get_submodule(EMB).qweight)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, want)
    assert (
        measure(loaded, repeats=1, warmup=0).total.stored_bytes
        == measure(whisper, repeats=1, warmup=0).total.stored_bytes
    )


def test_smoothquant_skips_the_tied_head_and_leaves_the_embedding_unscaled(whisper):
    reference = copy.deepcopy(whisper)
    calib = [adapter_for(whisper).example_inputs(2) for _ in range(2)]
    cfg = {"weight_bits": 8, "activations": "dynamic", "smoothquant": 0.5}
    with pytest.warns(UserWarning, match="not smoothing 'proj_out'"):
        quantize(whisper, {"_default": cfg}, calib=calib)
    rtn = copy.deepcopy(reference)
    quantize(rtn, {"_default": {"weight_bits": 8}})
    emb = whisper.get_submodule(EMB)
    assert torch.equal(emb.qweight, rtn.get_submodule(EMB).qweight)  # quantized from the unscaled weight
    assert not hasattr(whisper.proj_out, "act_smooth") and hasattr(whisper.model.decoder.layers[0].fc1, "act_smooth")
    assert _same(emb.qweight, whisper.proj_out.qweight)


def test_tied_layers_on_different_grids_or_half_targeted_warn_that_the_weight_is_stored_twice(whisper):
    other = copy.deepcopy(whisper)
    with pytest.warns(UserWarning, match="stored twice"):
        quantize(whisper, {EMB: {"weight_bits": 4}, "_default": {"weight_bits": 8}})
    assert not _same(whisper.proj_out.qweight, whisper.get_submodule(EMB).qweight)
    with pytest.warns(UserWarning, match="stay float"):
        quantize(other, {EMB: None, "_default": {"weight_bits": 8}})


def test_auto_bits_give_a_tied_table_its_heads_kernel_bits_so_it_stays_stored_once(whisper, monkeypatch):
    """W8A8 with auto bits on AVX2 gave the weight-only token table 8 bits and the tied proj_out 7 (its
    integer kernels' bits): two grids, the 51864x384 matrix stored twice (real Whisper: 53.8 MB
    against W8's 38.8 MB)."""
    monkeypatch.setattr("mmcompress.quant.config.integer_weight_bits", lambda: 7)  # an AVX2 CPU without VNNI
    record = quantize(whisper, {"activations": "dynamic"})
    emb, head = whisper.get_submodule(EMB), whisper.proj_out
    assert _same(emb.qweight, head.qweight) and record.modules[HEAD]["tied_to"] == EMB
    assert record.modules[EMB]["bits"] == record.modules["model.encoder.layers.0.fc1"]["bits"] == 7


def test_a_table_quantized_alone_takes_its_tied_head_along_so_a_later_pass_does_not_store_it_twice(whisper):
    """auto quantizes embedding tables in a stage of their own, then the other layers: Whisper's
    proj_out stayed float in the first stage and got its own codes in the second (real Whisper W8:
    58.9 MB against 38.8 MB)."""
    reference = copy.deepcopy(whisper)
    quantize(reference, {"weight_bits": 8})
    first = quantize(whisper, {"_default": {"weight_bits": 8, "layer_types": ["embedding"]}})
    assert first.modules[HEAD]["tied_to"] == EMB and _same(whisper.get_submodule(EMB).qweight, whisper.proj_out.qweight)
    second = quantize(whisper, {"_default": {"weight_bits": 8, "layer_types": ["linear", "conv"]}})
    assert HEAD not in second.modules  # already integer codes
    assert measure(whisper).total.stored_bytes == measure(reference).total.stored_bytes
