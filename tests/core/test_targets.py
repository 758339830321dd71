import pytest
from torch import nn

from mmcompress.core.targets import resolve_targets
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.models.adapter import adapter_for


def _resolve(model, mapping):
    chosen = resolve_targets(model, mapping, lambda m: isinstance(m, nn.Linear), adapter_for(model).modality_of)
    return {name: cfg for name, _, cfg in chosen}


def test_first_match_wins_and_none_skips(two_tower):
    got = _resolve(two_tower, {"text.2": "exact", "modality:text": None, "re:.*": "regex", "_default": "default"})
    assert got == {"text.2": "exact", "head": "regex"}


def test_modality_and_default(two_tower):
    assert _resolve(two_tower, {"modality:fusion": "f", "_default": None}) == {"head": "f"}


def test_exact_name_of_unsupported_module_is_an_error(two_tower):
    with pytest.raises(UnsupportedError, match="text.0"):
        _resolve(two_tower, {"text.0": "x"})


def test_unknown_name_and_bad_regex_are_errors(two_tower):
    with pytest.raises(ConfigError, match="names no module"):
        _resolve(two_tower, {"nope": "x"})
    with pytest.raises(ConfigError, match="not a valid regex"):
        _resolve(two_tower, {"re:(": "x"})
    with pytest.raises(ConfigError, match="empty"):
        _resolve(two_tower, {})


def test_mapping_that_matches_nothing_is_an_error_not_a_no_op():
    from mmcompress.prune.api import prune
    from mmcompress.quant.api import quantize

    plain = nn.Sequential(nn.Linear(4, 4))  # no adapter: no modalities
    with pytest.raises(ConfigError, match="no adapter describes Sequential"):
        prune(plain, {"modality:text": {"sparsity": 0.5}})
    with pytest.raises(ConfigError, match="matched no supported module"):
        quantize(plain, {"re:encoder.*": {}})
    assert quantize(plain, {"_default": None}).metrics["modules"] == 0  # explicit skip-all is fine


def test_compressing_an_already_quantized_model_says_to_quantize_last():
    import torch

    import mmcompress

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    mmcompress.quantize(model, {"_default": {"weight_bits": 8}})
    with pytest.raises(ConfigError, match="already quantized .* quantize last"):
        mmcompress.prune(model, {"_default": {"sparsity": 0.5}})
    with pytest.raises(ConfigError, match="already quantized"):
        mmcompress.prune_structured(model, {"re:.*": {"ratio": 0.5}}, example_inputs=torch.randn(2, 4))
