"""SplitMultiheadAttention computes what nn.MultiheadAttention computes, in every calling form that
nn.Transformer layers and users use."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.errors import UnsupportedError
from mmcompress.models.split_attention import SplitMultiheadAttention, split_attention


def _pair(**kwargs):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, **kwargs).eval()
    return mha, SplitMultiheadAttention.from_packed(mha).eval()


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_same_outputs_and_weights_with_masks(batch_first, need_weights, average):
    mha, split = _pair(batch_first=batch_first)
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(5)  # float -inf above the diagonal
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal}, {"attn_mask": causal.isinf()},
                   {"attn_mask": causal, "key_padding_mask": padding, "is_causal": True}):  # fmt: skip
        want = mha(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
        got = split(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
        assert torch.allclose(got[0], want[0], atol=1e-5), kwargs
        assert (got[1] is None) == (want[1] is None)
        if want[1] is not None:
            assert got[1].shape == want[1].shape and torch.allclose(got[1], want[1], atol=1e-5)


def test_cross_attention_with_other_key_widths_no_bias_and_unbatched_inputs():
    mha, split = _pair(kdim=8, vdim=12, bias=False)
    q, k, v = torch.randn(4, 2, 16), torch.randn(6, 2, 8), torch.randn(6, 2, 12)
    assert torch.allclose(split(q, k, v)[0], mha(q, k, v)[0], atol=1e-5)
    assert split.q_proj.bias is None
    mha, split = _pair()
    x = torch.randn(5, 16)
    got, want = split(x, x, x), mha(x, x, x)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)


def test_transformer_layers_keep_their_outputs_after_the_split():
    """The encoder layer in eval mode used PyTorch's fused fast path (packed weight); split, it runs the
    regular path with the same result, padding mask included (nested tensors turned off)."""
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2).eval()
    decoder = nn.TransformerDecoderLayer(16, 4, 32).eval()
    x, memory, target = torch.randn(3, 7, 16), torch.randn(7, 3, 16), torch.randn(5, 3, 16)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    with torch.no_grad():
        want_enc = encoder(x, src_key_padding_mask=padding)
        want_dec = decoder(target, memory, tgt_is_causal=True,
                           tgt_mask=nn.Transformer.generate_square_subsequent_mask(5))  # fmt: skip
        split_enc, split_dec = copy.deepcopy(encoder), copy.deepcopy(decoder)
        assert split_attention(split_enc) == ["layers.0.self_attn", "layers.1.self_attn"]
        assert split_attention(split_dec) == ["self_attn", "multihead_attn"]
        assert split_attention(split_dec) == []  # already split
        got_enc = split_enc(x, src_key_padding_mask=padding)
        got_dec = split_dec(target, memory, tgt_is_causal=True,
                            tgt_mask=nn.Transformer.generate_square_subsequent_mask(5))  # fmt: skip
    kept = ~padding
    assert torch.allclose(got_enc[kept], want_enc[kept], atol=1e-5)
    assert torch.allclose(got_dec, want_dec, atol=1e-5)


def test_training_gradients_reach_the_split_weights():
    _, split = _pair(dropout=0.1)
    split.train()
    x = torch.randn(2, 5, 16)
    split(x, x, x)[0].sum().backward()
    assert all(p.grad is not None for p in split.parameters())


def test_unsupported_forms_are_refused_by_name():
    with pytest.raises(UnsupportedError, match="add_bias_kv"):
        SplitMultiheadAttention.from_packed(nn.MultiheadAttention(16, 4, add_bias_kv=True))
    with pytest.raises(UnsupportedError, match="'head' is a Linear"):
        split_attention(nn.ModuleDict({"head": nn.Linear(2, 2)}), ["head"])


def test_attention_that_cannot_split_stays_float_with_a_warning_instead_of_failing_the_call():
    from mmcompress import quantize

    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4, add_bias_kv=True), "head": nn.Linear(16, 2)})
    with pytest.warns(UserWarning, match="add_bias_kv or add_zero_attn stay as they are .*: attn"):
        record = quantize(model, {"weight_bits": 8})
    assert isinstance(model["attn"], nn.MultiheadAttention) and "head" in record.modules


class EncoderClassifier(nn.Module):  # a user's text model on torch.nn's own transformer blocks
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens):
        return self.head(self.enc(self.emb(tokens)).mean(1))


def _replayed(model: nn.Module, record, replay) -> nn.Module:
    torch.manual_seed(1)
    fresh = EncoderClassifier().eval()
    replay(fresh, record)
    fresh.load_state_dict(model.state_dict())
    return fresh


def test_quantize_reaches_the_attention_projections_of_torch_nn_transformer_layers(tmp_path):
    from mmcompress import QuantConfig, load_quantized, quantize, save_quantized
    from mmcompress.quant.api import replay_quantize

    torch.manual_seed(0)
    model, tokens = EncoderClassifier().eval(), torch.randint(0, 50, (4, 9))
    with torch.no_grad():
        want = model(tokens)
    record = quantize(model, QuantConfig(weight_bits=8))
    assert record.info["split_attention"] == ["enc.layers.0.self_attn", "enc.layers.1.self_attn"]
    assert {f"enc.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkv"} <= set(record.modules)
    assert "enc.layers.1.self_attn.out_proj" in record.modules and record.metrics["float_left"] == 0
    with torch.no_grad():
        got = model(tokens)
        assert torch.allclose(got, want, atol=0.05), (got - want).abs().max()
        assert torch.equal(_replayed(model, record, replay_quantize)(tokens), got)
        save_quantized(model, tmp_path / "w8")  # a fresh float model is split again on load
        assert torch.equal(load_quantized(EncoderClassifier(), tmp_path / "w8")(tokens), got)


def test_heads_of_torch_nn_multihead_attention_are_pruned_and_replayed():
    from mmcompress import prune_structured
    from mmcompress.prune.structured import replay_structured

    torch.manual_seed(0)
    model, tokens = EncoderClassifier().eval(), torch.randint(0, 50, (4, 9))
    record = prune_structured(model, {"re:.*self_attn": {"unit": "heads", "ratio": 0.25}, "_default": None})
    attention = model.enc.layers[0].self_attn
    assert attention.num_heads == 3 and attention.q_proj.out_features == 24 and attention.out_proj.out_features == 32
    with torch.no_grad():
        got = model(tokens)
        assert torch.equal(_replayed(model, record, replay_structured)(tokens), got)


def test_macs_count_the_projections_of_packed_and_split_attention_alike():
    """A trial user's FFN channel pruning reported 49% of the MACs removed where 25% were: the packed
    attention projections were not counted."""
    from mmcompress.prune.summary import count_macs

    torch.manual_seed(0)
    encoder, x = (
        nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2),
        torch.randn(2, 16, 64),
    )
    expected = 2 * 2 * 16 * (4 * 64 * 64 + 2 * 64 * 128)  # layers x rows x (q, k, v, out + two FFN layers)
    assert count_macs(encoder, x) == expected
    split_attention(encoder)
    assert count_macs(encoder, x) == expected


def test_quantizing_an_attention_module_by_name_or_regex_quantizes_its_projections():
    from mmcompress import quantize
    from mmcompress.errors import ConfigError

    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    record = quantize(model, {"enc.layers.0.self_attn": {"weight_bits": 8}, "_default": None})
    assert sorted(record.modules) == sorted(f"enc.layers.0.self_attn.{p}_proj" for p in ("q", "k", "v", "out"))
    from mmcompress.recipe.schema import load_recipe
    from mmcompress.recipe.validate import check_recipe

    stage = {"pass": "quantize", "targets": {"enc.layers.1.self_attn": {"weight_bits": 8}, "_default": None}}
    check_recipe(load_recipe({"stages": [stage]}), EncoderClassifier())  # no ConfigError: recipes and the CLI too
    by_regex = quantize(EncoderClassifier().eval(), {"re:.*self_attn$": {"weight_bits": 8}, "_default": None})
    assert len(by_regex.modules) == 8 and all(n.endswith("_proj") for n in by_regex.modules)  # 2 layers x 4
    untouched = EncoderClassifier().eval()
    with pytest.raises(ConfigError, match="matched no supported module"):  # LayerNorms only
        quantize(untouched, {"re:.*norm1": {"weight_bits": 8}, "_default": None})
    assert isinstance(untouched.enc.layers[0].self_attn, nn.MultiheadAttention)  # refused before any change


def test_onnx_files_of_packed_attention_run_at_other_sequence_lengths(tmp_path):
    """torch's exporter bakes the export batch's length into packed attention; export splits a copy."""
    from mmcompress import export_onnx
    from mmcompress.graph.runtime import OrtModel

    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    export_onnx(model, torch.randint(0, 50, (2, 9)), tmp_path / "m.onnx")
    assert isinstance(model.enc.layers[0].self_attn, nn.MultiheadAttention)  # the model itself stays packed
    session = OrtModel.from_bytes((tmp_path / "m.onnx").read_bytes())
    tokens = torch.randint(0, 50, (3, 13))
    (got,) = session.run({"input": tokens})
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(got), model(tokens), atol=1e-5)


def test_padded_positions_stay_zero_as_the_nested_fast_path_left_them():
    """A default nn.TransformerEncoder in eval returns zeros at padded positions (nested tensors); the
    split turns that path off, so a hook zeroes them where the path would have run."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32)).eval()
    split = copy.deepcopy(encoder)
    split_attention(split)
    x, pad = torch.randn(2, 6, 32), torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    with torch.no_grad():
        want, got = encoder(x, src_key_padding_mask=pad), split(x, src_key_padding_mask=pad)
    assert torch.allclose(got, want, atol=1e-5)  # padded rows: the final norm of zeros, as before
    split_attention(split)  # splitting again adds no second hook
    assert len(split.layers[-1]._forward_hooks) == 1
    split.train()  # training: no nested path in torch either, no zeros
    with torch.no_grad():
        assert split(x, src_key_padding_mask=pad)[1, 3:].abs().sum() > 0
