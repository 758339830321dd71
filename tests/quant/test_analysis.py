import pytest
import torch

from mmcompress.quant.analysis import analyze_quantization_error, best_step_mapping, error_table
from mmcompress.quant.api import QuantConfig, quantize


@pytest.fixture
def calib():
    torch.manual_seed(0)
    return [(torch.randn(16, 1, 8, 8), torch.randint(0, 50, (16, 4))) for _ in range(3)]


def test_analysis_reports_every_layer_and_search_never_hurts(two_tower, calib):
    before = {k: v.clone() for k, v in two_tower.state_dict().items()}
    rows = analyze_quantization_error(two_tower, QuantConfig(weight_bits=3), calib)
    assert {r.name for r in rows} == {"image.0", "text.0", "text.2", "head"}
    for r in rows:
        assert r.best_output_rel_error <= r.output_rel_error + 1e-12
        assert r.sqnr_db > 5 and r.mean_abs_error > 0 and 0.5 <= r.best_clip_ratio <= 1.0
    assert {r.modality for r in rows} == {"image", "text", "fusion"}
    assert all(torch.equal(before[k], v) for k, v in two_tower.state_dict().items())  # model unchanged
    assert len(error_table(rows)) == 5


def test_searched_steps_lower_the_real_output_error(two_tower, calib):
    x = calib[0]
    with torch.no_grad():
        ref = two_tower(*x)
    rows = analyze_quantization_error(two_tower, {"modality:fusion": QuantConfig(weight_bits=2)}, calib)
    plain, searched = type(two_tower)(), type(two_tower)()
    plain.load_state_dict(two_tower.state_dict())
    searched.load_state_dict(two_tower.state_dict())
    quantize(plain, {"head": QuantConfig(weight_bits=2), "_default": None})
    quantize(searched, best_step_mapping(rows, QuantConfig(weight_bits=2)))
    with torch.no_grad():
        err_plain = (plain(*x) - ref).pow(2).sum()
        err_searched = (searched(*x) - ref).pow(2).sum()
    assert err_searched <= err_plain


def test_clip_ratio_is_validated():
    from mmcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_ratio"):
        QuantConfig.from_dict({"clip_ratio": 1.5})
