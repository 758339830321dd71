"""act_observer "search": static input ranges chosen by each layer's output error (depthwise CNN)."""

import torch
from torch import nn

from mmcompress.quant.act_calibration import static_ranges
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.range_search import RangeSearch, candidate_ranges, output_error

SEARCH_GAIN = 2.0  # output error of min/max over that of the searched range, outlier fed to tiny weights


class TinyMobile(nn.Module):
    """Stem, an inverted residual (expand -> depthwise -> project, ReLU6) with a residual add, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(x))))
        x = x + self.project(y)
        return self.head(x.mean((2, 3)))


def _model_and_data():
    torch.manual_seed(0)
    model = TinyMobile().eval()
    data = torch.randn(8, 3, 12, 12)
    data[0, 0, 0, 0] = 60.0  # one outlier pixel
    return model, data


def test_search_beats_minmax_where_an_outlier_meets_small_weights():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[:, 0] = 1e-3  # channel 0 barely matters ...
    x = torch.randn(256, 4)
    x[0, 0] = 500.0  # ... and holds the outlier that sets min/max
    search = RangeSearch(layer, candidate_ranges(float(x.min()), float(x.max())))
    search.update(x)
    lo, hi = search.best()
    assert hi < float(x.max())
    assert output_error(layer, x, float(x.min()), float(x.max())) > SEARCH_GAIN * output_error(layer, x, lo, hi)


def test_search_ranges_do_not_depend_on_batching():
    model, data = _model_and_data()
    layers = {n: (m, "search") for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    whole = static_ranges(model, layers, [data], str)
    split = static_ranges(model, layers, list(data.split(3)), str)
    assert whole.keys() == split.keys()
    for name in whole:
        assert abs(whole[name][0] - split[name][0]) <= 1e-6 * whole[name][0] and whole[name][1] == split[name][1]


def test_quantize_with_search_is_no_worse_than_percentile_per_layer():
    model, data = _model_and_data()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        layers = {name: (module, "search")}
        searched = static_ranges(model, layers, [data], str)[name]
        percentile = static_ranges(model, {name: (module, "percentile")}, [data], str)[name]
        inputs = []
        handle = module.register_forward_pre_hook(lambda m, a, inputs=inputs: inputs.append(a[0]))
        with torch.no_grad():
            model(data)
        handle.remove()

        def err(params, x=inputs[0], module=module):
            step, zero = params
            return output_error(module, x, -zero * step, (255 - zero) * step)

        assert err(searched) <= err(percentile) * (1 + 1e-3)
    quantized = _model_and_data()[0]
    rec = quantize(quantized, QuantConfig(activations="static", act_observer="search"), calib=[data])
    assert rec.modules["depthwise"]["activations"]["observer"] == "search"
    with torch.no_grad():
        reference = model(data)
        cos = nn.functional.cosine_similarity(quantized(data).flatten(), reference.flatten(), dim=0)
    assert cos > 0.99


def test_config_round_trip():
    cfg = QuantConfig(activations="static", act_observer="search", method="gptq")
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
