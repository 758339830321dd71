"""Hugging Face families on tiny random configs (built offline): adapters map real modules, and
quantization (W8A8, W4), head pruning and ONNX export work with outputs near float."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

from mmcompress import export_onnx, prune_structured, quantize
from mmcompress.core.batches import call_model
from mmcompress.core.record import Record
from mmcompress.graph.export import flat_tensors
from mmcompress.models.adapter import adapter_for, check_adapter, registered_adapters
from mmcompress.models.attention import head_parts
from mmcompress.models.hf.tiny import TINY, tiny_model
from mmcompress.models.split_attention import split_attention
from mmcompress.prune.structured import replay_structured

FAMILIES = sorted(TINY)
W8A8 = {"_default": {"weight_bits": 7, "activations": "dynamic"}}  # 7-bit: exact u8s8 kernels on AVX2
W4 = {"_default": {"weight_bits": 4, "granularity": "per_group", "group_size": 16, "layer_types": ["linear"]}}
# Largest relative error of any float output (random weights amplify errors; real weights do better).
TOLERANCE = {"w8a8": 0.08, "w4": 0.35}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model = tiny_model(request.param)
    adapter = adapter_for(model)
    x = adapter.example_inputs(3)
    with torch.no_grad():
        ref = flat_tensors(call_model(model, x))
    return request.param, model, adapter, x, ref


def rel_error(out, ref) -> float:
    pairs = [(a, b) for a, b in zip(flat_tensors(out), ref, strict=True) if b.is_floating_point()]
    return max(float((a - b).norm() / b.norm().clamp_min(1e-9)) for a, b in pairs)


def test_every_registered_adapter_maps_existing_modules():
    registry = registered_adapters()
    for family in FAMILIES:
        model = tiny_model(family)
        assert model.config.model_type in registry
        adapter = adapter_for(model)
        assert check_adapter(model, adapter) == []
        params = [n for n, _ in model.named_parameters()]
        for modality in adapter.towers:
            owned = [n for n in params if adapter.modality_of(n) == modality]
            assert owned, f"{family}: tower {modality} owns no parameter"
        assert adapter.layers, f"{family}: no layer stack"
        attention = [m for m in model.modules() if adapter.attention_spec(m) is not None]
        assert attention, f"{family}: no attention module known"
        for module in attention:
            q, k, v, o, heads, head_dim, _ = head_parts(module, adapter)
            assert q.out_features == heads * head_dim == o.in_features
        with torch.no_grad():
            call_model(model, adapter.example_inputs(2))


def test_multimodal_towers_are_separated():
    assert set(adapter_for(tiny_model("clip")).towers) == {"image", "text", "fusion"}
    assert set(adapter_for(tiny_model("whisper")).towers) == {"audio", "text", "fusion"}
    llava = adapter_for(tiny_model("llava"))
    assert llava.modality_of("model.multi_modal_projector.linear_1.weight") == "fusion"
    assert llava.modality_of("model.vision_tower.encoder.layers.0.mlp.fc1") == "image"
    whisper = adapter_for(tiny_model("whisper"))
    assert whisper.modality_of("model.decoder.layers.1.encoder_attn.q_proj") == "fusion"
    assert whisper.modality_of("model.decoder.layers.1.self_attn.q_proj") == "text"


@pytest.mark.parametrize("label", ["w8a8", "w4"])
def test_quantized_outputs_stay_near_float(family, label):
    name, model, adapter, x, ref = family
    quantized = copy.deepcopy(model)
    record = quantize(quantized, W8A8 if label == "w8a8" else W4, calib=[adapter.example_inputs(4)])
    assert len(record.modules) >= 10
    with torch.no_grad():
        error = rel_error(call_model(quantized, x), ref)
    assert error < TOLERANCE[label], f"{name} {label}: {error:.3f}"


def test_pruned_heads_equal_masked_heads(family):
    """Removing heads physically gives exactly the model whose removed heads output zero."""
    name, model, adapter, x, _ = family
    pruned = copy.deepcopy(model)
    record = prune_structured(pruned, {"_default": {"unit": "heads", "ratio": 0.5}})
    assert record.metrics["params_after"] < record.metrics["params_before"]
    masked = copy.deepcopy(model)
    split_attention(masked, record.info.get("split_attention", []))  # SigLIP's pooling head: nn.MultiheadAttention
    modules = dict(masked.named_modules())
    for module_name, entry in record.modules.items():
        _, _, _, o, heads, head_dim, _ = head_parts(modules[module_name], adapter)
        dropped = sorted(set(range(heads)) - set(entry["keep"]))
        with torch.no_grad():
            for h in dropped:
                o.weight[:, h * head_dim : (h + 1) * head_dim] = 0
    with torch.no_grad():
        got, want = flat_tensors(call_model(pruned, x)), flat_tensors(call_model(masked, x))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_pruned_feed_forward_channels_equal_masked_channels(family):
    """The hidden units of every known feed-forward block (inside modules the tracer keeps whole)
    shrink, giving exactly the model whose `down` layer ignores the removed units; replay repeats it."""
    name, model, adapter, x, _ = family
    pruned = copy.deepcopy(model)
    config = {"ratio": 0.5, "method": "magnitude", "compensate": False}
    record = prune_structured(pruned, {"_default": config}, example_inputs=x)
    entries = [e for e in record.modules.values() if e["structure"] == "channels"]
    assert entries and all(e["kept"] == e["before"] // 2 for e in entries), name
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for entry in entries:
            dropped = sorted(set(range(entry["before"])) - set(entry["keep"]))
            for consumer, _, _ in entry["group"]["consumers"]:
                modules[consumer].weight[:, dropped] = 0
        got, want = flat_tensors(call_model(pruned, x)), flat_tensors(call_model(masked, x))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    fresh = copy.deepcopy(model)
    replay_structured(fresh, Record.from_dict(record.to_dict()))
    fresh.load_state_dict(pruned.state_dict())


def _export_target(name, model, x):
    """Whisper's decoder does not export with the TorchScript exporter (aten::diff): its encoder does."""
    if name == "whisper":
        return model.get_encoder(), {"input_features": x["input_features"]}
    return model, x


class _DiffDecoder(torch.nn.Module):
    """Like real Whisper tiny.en's decoder (its position ids go through torch.diff, which the
    TorchScript exporter cannot write), with an encoder of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)

    def get_encoder(self) -> torch.nn.Module:
        return self.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).diff(dim=-1)


def test_an_encoder_decoder_that_does_not_export_fails_in_one_line_that_says_what_to_export(tmp_path, capfd):
    """The TorchScript exporter printed the whole IR graph on stdout before the error (thousands of
    lines for real Whisper); the error did not say that the encoder alone exports."""
    from mmcompress.errors import MMCompressError

    capfd.readouterr()
    with pytest.raises(MMCompressError, match=r"aten::diff.*encoder-decoder model: export its encoder alone"):
        export_onnx(_DiffDecoder().eval(), torch.randn(2, 4), tmp_path / "w.onnx")
    assert "graph" not in capfd.readouterr().out
    assert export_onnx(_DiffDecoder().get_encoder(), torch.randn(2, 4), tmp_path / "e.onnx").cosine > 0.999


@pytest.mark.parametrize("label", ["float", "w8a8", "w4"])
def test_onnx_export_matches_pytorch(family, label, tmp_path):
    name, model, adapter, x, _ = family
    target = copy.deepcopy(model)
    if label != "float":
        quantize(target, W8A8 if label == "w8a8" else W4, calib=[adapter.example_inputs(4)])
    target, inputs = _export_target(name, target, x)
    result = export_onnx(target, inputs, tmp_path / "m.onnx")
    assert result.cosine > (0.999 if label != "w8a8" else 0.99), (name, label, result.cosine)
    ops = {node.op_type for node in onnx.load(result.path).graph.node}
    if label == "w8a8":
        assert result.int8_weights > 0 and "MatMulInteger" in ops
    if label == "w4":
        assert "MatMulNBits" in ops
