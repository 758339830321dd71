"""Integer kernels and the float weight cache equal the simulation (quant/kernels.py) within the
rounding of their integer path, and are chosen where they apply (no silent fallback)."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmcompress.core.cpu import integer_weight_bits
from mmcompress.quant.activations import ActSpec, fake_quantize_per_token
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.fused_codes import fused
from mmcompress.quant.kernel_select import MIN_ROWS, ONEDNN, choose_kernel, grouped_min_rows, int_mm_fast
from mmcompress.quant.kernels import ACTIVATED, INTEGER_KERNELS, input_codes, onednn_exact, set_kernel, tensor_qparams
from mmcompress.quant.modules import QuantEmbedding, QuantLinear, WeightGrid
from mmcompress.quant.primitives import fake_quantize_dynamic_uint8

KERNELS = [k for k in INTEGER_KERNELS if k != "onednn" or ONEDNN]
BITS = integer_weight_bits()  # the widest symmetric codes oneDNN's u8s8 GEMM sums exactly on this CPU


def realish(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Transformer-like activations: GELU-shaped values plus a few outlier channels and tokens."""
    g = torch.Generator().manual_seed(seed)
    x = F.gelu(torch.randn(rows, k, generator=g) * 2)
    x[:, :3] *= 30  # outlier channels
    x[::7] *= 4  # louder tokens
    return x


def w8a8(k: int, n: int, granularity: str, bits: int = 8, bias: bool = True, smooth: bool = False) -> QuantLinear:
    torch.manual_seed(1)
    q = QuantLinear.from_float(nn.Linear(k, n, bias=bias), WeightGrid(bits=bits))
    q.set_activations(ActSpec("dynamic", granularity), torch.rand(k) + 0.5 if smooth else None)
    return q.eval()


def exact(q: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer in float64 from the simulation's integers: step * sum(codes * w_codes) * w_step + bias."""
    x = x * q.act_smooth if hasattr(q, "act_smooth") else x
    if q.act.granularity == "per_token":
        xq = fake_quantize_per_token(x).double()
    else:
        xq = fake_quantize_dynamic_uint8(x).double()
    y = xq @ (q.qweight.double() * q.scale.double()).T
    return y if q.bias is None else y + q.bias.double()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
@pytest.mark.parametrize("bits,bias,smooth", [(8, True, False), (7, False, True), (8, True, True)])
def test_integer_kernels_equal_the_simulation(kernel, granularity, bits, bias, smooth):
    q = w8a8(96, 40, granularity, bits, bias, smooth)
    sim = copy.deepcopy(q)
    set_kernel(sim, "simulate")
    runs = kernel
    if kernel == "onednn" and bits > BITS:  # 8-bit codes would saturate oneDNN here: _int_mm where it is fast
        runs = "int_mm" if int_mm_fast() else "cache"
    for x in (torch.randn(3, 37, 96), realish(200, 96), realish(5, 96, seed=2)):  # 5 rows: int_mm pads to 17
        q.kernel = kernel
        with torch.no_grad():
            y, y_sim = q(x), sim(x)
        assert q.last_kernel == runs and sim.last_kernel == "simulate"
        ref = exact(q, x).float()
        scale = ref.abs().amax() + 1e-6
        # the kernel sums integers exactly; only its final float scaling rounds (a few ulps)
        assert (y - ref).abs().max() / scale < (1e-5 if runs == "cache" else 1e-6)
        assert (y - y_sim).abs().max() / scale < 1e-5  # the simulation's float GEMM rounds more


def w4a8(k: int, n: int, granularity: str, grid: WeightGrid, smooth: bool = False) -> QuantLinear:
    torch.manual_seed(2)
    q = QuantLinear.from_float(nn.Linear(k, n), grid)
    q.set_activations(ActSpec("dynamic", granularity), torch.rand(k) + 0.5 if smooth else None)
    return q.eval()


def exact_grouped(q: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer in float64 from the simulation's integers, weight steps per group of inputs."""
    x = x * q.act_smooth if hasattr(q, "act_smooth") else x
    xq = fake_quantize_per_token(x) if q.act.granularity == "per_token" else fake_quantize_dynamic_uint8(x)
    size = q.qweight.shape[1] // q.scale.shape[1]
    ints = q.qweight.double() - q._zero().double().repeat_interleave(size, 1)
    return xq.double() @ (ints * q.scale.double().repeat_interleave(size, 1)).T + q.bias.double()


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
@pytest.mark.parametrize(
    "grid,smooth",
    [
        (WeightGrid(bits=4, symmetric=False, group_size=32), False),
        (WeightGrid(bits=4, group_size=48), True),
        (WeightGrid(bits=7, symmetric=False), False),  # per channel with zero points
        (WeightGrid(bits=8, group_size=32), False),
    ],
)
def test_grouped_w4a8_kernel_equals_the_simulation(granularity, grid, smooth):
    q = w4a8(96, 40, granularity, grid, smooth)
    sim = copy.deepcopy(q)
    set_kernel(sim, "simulate")
    runs = "onednn" if onednn_exact(q) else "cache"  # codes too wide for this CPU's u8s8 sums: the float cache
    for kernel in ("onednn", "int_mm"):  # torch._int_mm takes per-channel symmetric codes only: oneDNN runs
        q.kernel = kernel
        for x in (torch.randn(3, 37, 96), realish(200, 96)):
            with torch.no_grad():
                y, y_sim = q(x), sim(x)
            assert q.last_kernel == runs
            ref = exact_grouped(q, x).float()
            scale = ref.abs().amax() + 1e-6
            assert (y - ref).abs().max() / scale < (1e-6 if runs == "onednn" else 1e-5)  # integers exact
            assert (y - y_sim).abs().max() / scale < 1e-5
    if runs == "cache":
        return
    q.kernel = "auto"  # per-group GEMMs pay from rows x out = GROUPED_WORK; below, the cached weight runs
    least = grouped_min_rows(q) if q.scale.shape[1] > 1 else MIN_ROWS
    assert least * 40 >= (96 << 10 if granularity == "per_tensor" else 128 << 10) or least == MIN_ROWS
    with torch.no_grad():
        q(torch.randn(least, 96))
        assert q.last_kernel == "onednn"
        q(torch.randn(least - 1, 96))
        assert q.last_kernel == "cache"


class _GemmInputs(TorchDispatchMode):
    """Records the dtype of the input codes of every oneDNN int8 GEMM call."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "qlinear_pointwise" in str(func):
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
@pytest.mark.parametrize("grid", [WeightGrid(bits=BITS), WeightGrid(bits=4, group_size=32)])
def test_onednn_gemms_take_uint8_inputs_per_token_too(grid):
    """Signed int8 inputs ran on oneDNN's reference kernel on a VNNI CPU without AMX (5-15 s for one
    Whisper encoder product): per-token codes go in as uint8 with zero point 128."""
    q = w4a8(96, 40, "per_token", grid)
    q.kernel = "onednn"
    with torch.no_grad(), _GemmInputs() as seen:
        q(realish(64, 96))
    assert q.last_kernel == "onednn" and seen.dtypes and set(seen.dtypes) == {torch.uint8}
    x = realish(16, 96)
    codes, step = fused("token_u8", x)
    signed, signed_step, _ = input_codes(x, None)
    assert torch.equal(codes.int() - 128, signed.int()) and torch.equal(step, signed_step)


def test_w4a8_config_takes_grouped_weights_and_refuses_what_the_kernels_cannot_run():
    cfg = QuantConfig(weight_bits=4, granularity="per_group", group_size=32, scheme="asymmetric", activations="dynamic")
    assert not cfg.integer_channels
    with pytest.raises(ValueError, match="weight_bits <= 7"):
        QuantConfig(weight_bits=8, scheme="asymmetric", activations="dynamic")
    with pytest.raises(ValueError, match="static"):
        QuantConfig(weight_bits=4, granularity="per_group", activations="static")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 64))
    with pytest.warns(UserWarning, match=r"activations stay float for 1 convolution.*\b0\b"):
        quantize(model, cfg)
    assert model[0].act is None and model[2].act is not None and model[2].scale.shape[1] == 288 // 32


def test_input_codes_are_the_simulations_integers():
    x = realish(64, 48)
    codes, step, _ = input_codes(x, None)
    assert torch.equal(codes.float() * step, fake_quantize_per_token(x))
    step, zero = tensor_qparams(x)
    codes, _, _ = input_codes(x, (step, zero))
    assert codes.dtype == torch.uint8
    assert torch.equal((codes.float() - zero) * step, fake_quantize_dynamic_uint8(x))
    zeros, step0, zero0 = input_codes(torch.zeros(4, 8), tensor_qparams(torch.zeros(4, 8)))
    assert float(step0) == 1.0 and zero0 == 0 and not zeros.any()


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
def test_auto_chooses_the_integer_kernel_and_falls_back_where_it_must():
    q = w8a8(64, 32, "per_token", bits=BITS)
    with torch.no_grad():
        q(torch.randn(MIN_ROWS, 64))
        assert q.last_kernel == "onednn"
        q(torch.randn(1, 64))  # one token: too small for the int8 GEMM
        assert q.last_kernel == "cache"
        q(torch.randn(MIN_ROWS, 64, dtype=torch.float64))
        assert q.last_kernel == "cache"
    x = torch.randn(MIN_ROWS, 64, requires_grad=True)
    q(x).sum().backward()  # autograd: the simulation, gradients flow
    assert q.last_kernel == "simulate" and x.grad is not None
    asym = QuantLinear.from_float(nn.Linear(64, 32), WeightGrid(bits=8, symmetric=False))
    asym.set_activations(ActSpec("dynamic"))
    with torch.no_grad():
        asym(torch.randn(MIN_ROWS, 64))
    assert asym.last_kernel == "cache"
    static = w8a8(64, 32, "per_tensor")
    static.set_activations(ActSpec("static"))
    with torch.no_grad():
        static(torch.randn(MIN_ROWS, 64))
    assert choose_kernel(static, torch.randn(MIN_ROWS, 64)) == "cache"


def test_float_weight_cache_follows_the_codes_and_is_not_saved():
    torch.manual_seed(0)
    q = QuantLinear.from_float(nn.Linear(16, 8), WeightGrid(bits=4, group_size=8, symmetric=False)).eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        y = q(x)
        assert q.last_kernel == "cache"
        assert torch.equal(y, F.linear(x, q.dequantized_weight(), q.bias))
        assert set(q.state_dict()) == {"qweight", "scale", "zero_point", "bias"}
        q.qweight.mul_(-1)  # in-place edit: the cache must see it
        assert torch.equal(q(x), F.linear(x, q.dequantized_weight(), q.bias))
        other = QuantLinear.from_float(nn.Linear(16, 8), WeightGrid(bits=4, group_size=8, symmetric=False))
        q.load_state_dict(other.state_dict())
        assert torch.equal(q(x), other(x))
        twin = copy.deepcopy(q)
        assert "_float_weight" not in twin.__dict__ and torch.equal(twin(x), q(x))
        buffer = io.BytesIO()
        torch.save(q, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), q(x))
        q64 = copy.deepcopy(q).to(torch.float64)
        assert q64(x.double()).dtype == torch.float64


def test_weight_only_modules_use_the_cache_and_simulate_opts_out():
    emb = QuantEmbedding.from_float(nn.Embedding(20, 8), WeightGrid(bits=8)).eval()
    ids = torch.tensor([[1, 5, 19]])
    with torch.no_grad():
        fast = emb(ids)
        assert emb.last_kernel == "cache"
        assert set_kernel(emb, "simulate") == 1
        assert torch.equal(emb(ids), fast) and emb.last_kernel == "simulate"
        assert "_float_weight" not in emb.__dict__
    with pytest.raises(ValueError, match="kernel"):
        set_kernel(emb, "fastest")


def test_quantized_model_compiles(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    quantize(model, QuantConfig(activations="dynamic", act_granularity="per_token"))
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend="eager")(x)  # dynamo traces the simulation path
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_real_minilm_kernels_match_the_simulation():
    minilm = pytest.importorskip("mmcompress.models.minilm")
    try:
        base = minilm.MiniLMEncoder().eval()
        tok = minilm.load_minilm_tokenizer()
    except Exception as err:  # the packaged weights are an optional extra
        pytest.skip(f"MiniLM weights unavailable: {err}")
    batch = tok(["a red cotton coat with buttons", "the quick brown fox"], padding=True, return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model = copy.deepcopy(base)
    quantize(
        model,
        {
            "re:.*layer\\.\\d+\\.output\\.dense": QuantConfig(
                weight_bits=BITS, activations="dynamic", act_granularity="per_token"
            ),
            "_default": QuantConfig(weight_bits=BITS, activations="dynamic"),
        },
    )
    sim = copy.deepcopy(model)
    set_kernel(sim, "simulate")
    inputs = {}
    for name, module in sim.named_modules():
        if isinstance(module, QuantLinear):
            module.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0]))
    with torch.no_grad():
        fast, ref, flt = model(**batch), sim(**batch), base(**batch)
        for name, module in model.named_modules():  # each layer, fed the simulation's input, equals it
            if name in inputs:
                y, y_sim = module(inputs[name]), dict(sim.named_modules())[name](inputs[name])
                if getattr(y, ACTIVATED, None) == "gelu":  # the FFN's GELU ran in the int8 kernel (fuse_act)
                    y_sim = F.gelu(y_sim)
                assert (y - y_sim).abs().max() <= 1e-5 * y_sim.abs().max()
    kernels = {m.last_kernel for n, m in model.named_modules() if isinstance(m, QuantLinear) and "encoder" in n}
    assert kernels == ({"onednn"} if ONEDNN else {"cache"})  # the pooler sees 2 rows: float GEMM
    # whole model: last-ulp differences move a few codes across rounding boundaries downstream, so
    # kernel and simulation are two equally good quantized models, not bit-identical ones
    cos_fast, cos_sim = F.cosine_similarity(fast, flt).mean(), F.cosine_similarity(ref, flt).mean()
    assert cos_fast > 0.99 and abs(cos_fast - cos_sim) < 0.003


def test_w8a8_record_keeps_the_cpu_and_its_weight_bits():
    from mmcompress.core.cpu import integer_weight_bits
    from mmcompress.core.record import Record

    model = nn.Sequential(nn.Linear(8, 8))
    rec = quantize(model, QuantConfig(activations="dynamic"))
    info = rec.info["integer_kernels"]
    assert info["auto_weight_bits"] == integer_weight_bits() and "vnni" in info["cpu"]
    assert Record.from_json(rec.to_json()) == rec
    assert "integer_kernels" not in quantize(nn.Sequential(nn.Linear(8, 8)), QuantConfig()).info


@pytest.mark.parametrize("grid", [WeightGrid(bits=8), WeightGrid(bits=4, group_size=16, symmetric=False)])
def test_compiled_gemv_equals_the_simulation_on_one_row(grid, monkeypatch):
    import mmcompress.quant.kernel_select as select

    torch.manual_seed(0)
    q = QuantLinear.from_float(nn.Linear(64, 48), grid).eval()
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        reference = F.linear(x, q.dequantized_weight(), q.bias)
        q(x)
        assert q.last_kernel == "cache"  # a small weight: the float GEMV from the caches wins
        monkeypatch.setattr(select, "GEMV_WEIGHTS", 0)
        monkeypatch.setattr(select, "gemv_wins", lambda module, x: True)  # as on an AVX-512 CPU
        torch.testing.assert_close(q(x), reference, rtol=1e-5, atol=1e-5)
        assert q.last_kernel == "gemv"
        q(torch.randn(3, 64))
        assert q.last_kernel == "cache"  # one row only


def test_the_gemv_runs_only_where_it_measured_faster_than_float(monkeypatch):
    """On an AVX2-only EPYC the compiled GEMV took 14.8 ms where float took 8.2 (51864 x 384): the
    choice is timed once per shape, and the loser is never used."""
    import mmcompress.quant.kernel_select as select

    timed = []
    monkeypatch.setattr(select, "GEMV_WEIGHTS", 0)
    monkeypatch.setattr(select, "GEMV_TIMED", {})
    monkeypatch.setattr(select, "_time_gemv", lambda module, x: timed.append(module) or False)
    first, second = (QuantLinear.from_float(nn.Linear(64, 48), WeightGrid(bits=8)).eval() for _ in range(2))
    x = torch.randn(1, 64)
    with torch.no_grad():
        first(x), first(x), second(x)
    assert first.last_kernel == second.last_kernel == "cache" and len(timed) == 1  # one timing per shape
    monkeypatch.setattr(select, "GEMV_TIMED", {})
    monkeypatch.setattr(select, "_time_gemv", lambda module, x: True)
    with torch.no_grad():
        first(x)
    assert first.last_kernel == "gemv" and "_float_weight" not in first.__dict__  # no float copy kept for nothing


def test_gemv_timing_compares_with_the_float_weight():
    import mmcompress.quant.kernel_select as select

    q = QuantLinear.from_float(nn.Linear(64, 48), WeightGrid(bits=8)).eval()
    assert select._time_gemv(q, torch.randn(1, 64)) in (True, False)
    assert "_float_weight" in q.__dict__  # the float side ran on the cached weight


def test_gemv_falls_back_to_the_cache_when_compiling_fails(monkeypatch):
    import mmcompress.quant.kernels as kernels

    def no_compiler(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "_GEMV", {"fn": no_compiler})
    q = QuantLinear.from_float(nn.Linear(32, 8), WeightGrid(bits=8)).eval()
    set_kernel(q, "gemv")
    x = torch.randn(1, 32)
    with torch.no_grad(), pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        y = q(x)
    torch.testing.assert_close(y, F.linear(x, q.dequantized_weight(), q.bias))
    with torch.no_grad():
        q(x)
    assert q.last_kernel == "cache"  # not retried


@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
def test_gradients_pass_through_quantized_inputs_straight_through(granularity):
    """A new user's input gradient through a W8A8 / W4A8 dynamic layer was exactly zero (rounding)."""
    for grid in (WeightGrid(bits=8), WeightGrid(bits=4, group_size=32)):
        q = w4a8(96, 40, granularity, grid)
        x = realish(8, 96).requires_grad_()
        q(x).square().sum().backward()
        w = q.dequantized_weight()
        xd = x.detach().requires_grad_()
        F.linear(xd, w, q.bias).square().sum().backward()  # straight through: as if the input were float
        cos = F.cosine_similarity(x.grad.flatten(), xd.grad.flatten(), dim=0)
        assert q.last_kernel == "simulate" and x.grad.abs().sum() > 0 and cos > 0.99


def test_cached_weight_path_quantizes_inputs_exactly_as_the_simulation():
    """Below the integer kernels' row threshold the cached float weight runs; its per-tensor input
    codes come from the fused passes: the same values as the simulation's fake quantization."""
    for grid, smooth in ((WeightGrid(bits=8), False), (WeightGrid(bits=4, group_size=32), True)):
        q = w4a8(96, 40, "per_tensor", grid, smooth)
        sim = copy.deepcopy(q)
        set_kernel(sim, "simulate")
        q.kernel = "cache"
        for x in (realish(1, 96), realish(7, 96), realish(64, 96)):
            assert torch.equal(q.cached_path_input(x), q.quantize_input(x))
            with torch.no_grad():
                y, y_sim = q(x), sim(x)
            assert q.last_kernel == "cache" and torch.equal(y, y_sim)


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
def test_codes_with_zero_points_take_one_bit_less_on_cpus_whose_pairs_saturate(monkeypatch):
    """Asymmetric 7-bit codes minus their zero point reach +-127: AVX2 without VNNI adds u8s8 pairs in int16."""
    import mmcompress.quant.kernels as kernels

    q = w4a8(96, 40, "per_tensor", WeightGrid(bits=7, symmetric=False))
    six = w4a8(96, 40, "per_tensor", WeightGrid(bits=6, symmetric=False))
    x = realish(64, 96)
    with torch.no_grad():
        monkeypatch.setattr(kernels, "integer_weight_bits", lambda: 8)  # VNNI / AMX
        q(x)
        assert q.last_kernel == "onednn"
        monkeypatch.setattr(kernels, "integer_weight_bits", lambda: 7)  # AVX2 without VNNI
        q(x), six(x)
        assert q.last_kernel == "cache" and six.last_kernel == "onednn"


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
def test_codes_too_wide_for_this_cpus_onednn_sums_run_on_int_mm_or_the_cache(monkeypatch):
    """On AVX2 without VNNI oneDNN adds pairs of uint8 x int8 products into a saturating int16: 8-bit
    weight codes there gave errors of 6% of the output, silently. Such layers run on `torch._int_mm`
    (int8 x int8, exact everywhere) or, for grouped / asymmetric codes, on the float cache."""
    import mmcompress.quant.kernel_select as select
    import mmcompress.quant.kernels as kernels

    monkeypatch.setattr(kernels, "integer_weight_bits", lambda: 7)  # an AVX2 CPU without VNNI
    q, x = w8a8(96, 40, "per_token", bits=8), realish(64, 96)
    with torch.no_grad():
        for kernel, fast in (("auto", True), ("onednn", True), ("auto", False), ("onednn", False)):
            monkeypatch.setattr(select, "int_mm_fast", lambda fast=fast: fast)  # AVX2: 57x slower than float
            q.kernel = kernel
            y = q(x)
            assert q.last_kernel == ("int_mm" if fast else "cache")
            assert (y - exact(q, x).float()).abs().max() / y.abs().max() < (1e-6 if fast else 1e-5)
        seven = w8a8(96, 40, "per_token", bits=7)
        seven(x)
        assert seven.last_kernel == "onednn"  # 7-bit codes cannot saturate
        grouped = w4a8(96, 40, "per_token", WeightGrid(bits=8, group_size=32))
        grouped.kernel = "onednn"
        grouped(x)
        assert grouped.last_kernel == "cache"


def test_wide_codes_that_will_run_at_float_speed_are_named_at_quantize(monkeypatch):
    """On an AVX2 CPU without VNNI, 8-bit W8A8 layers ran on the cached float weight with no word said
    (a new user found every layer's last_kernel 'cache'): quantize now warns, naming the layers."""
    import mmcompress.quant.kernel_select as select
    import mmcompress.quant.kernels as kernels

    monkeypatch.setattr(select, "integer_weight_bits", lambda: 7)
    monkeypatch.setattr(select, "int_mm_fast", lambda: False)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"2 layer\(s\) with dynamic int8 inputs keep float speed .*: 0, 2"):
        quantize(model, QuantConfig(weight_bits=8, activations="dynamic"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize(nn.Sequential(nn.Linear(16, 8)), QuantConfig(weight_bits=7, activations="dynamic"))
        monkeypatch.setattr(select, "int_mm_fast", lambda: True)  # exact and fast enough: nothing to say
        quantize(nn.Sequential(nn.Linear(16, 8)), QuantConfig(weight_bits=8, activations="dynamic"))
        asymmetric = {"activations": "dynamic", "scheme": "asymmetric"}
        quantize(nn.Sequential(nn.Linear(16, 8)), QuantConfig(weight_bits=6, **asymmetric))  # span 7: exact
    monkeypatch.setattr(kernels, "integer_weight_bits", lambda: 7)  # as on AVX2, whatever this CPU
    seven = nn.Sequential(nn.Linear(16, 8))  # 7 bits + a zero point span 8; _int_mm takes no zero points
    with pytest.warns(UserWarning, match=r"1 layer\(s\) .* keep float speed .*: 0"):
        quantize(seven, QuantConfig(weight_bits=7, **asymmetric))
    seven(torch.randn(3, 16))
    assert seven[0].last_kernel == "cache"  # what the warning said


def test_auto_bits_that_narrow_to_7_say_so(monkeypatch):
    """A new user's W8A8 Whisper on an AVX2 CPU got 7-bit weights in 66 of 69 layers (WER 0.120 ->
    0.174) with only a `weight_bits_min 7` row to hint at it: quantize now says why and how to keep 8."""
    import mmcompress.quant.config as config
    import mmcompress.quant.kernel_select as select

    monkeypatch.setattr(config, "integer_weight_bits", lambda: 7)
    monkeypatch.setattr(select, "integer_weight_bits", lambda: 7)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"weight_bits 'auto' gave 2 layer\(s\) with integer inputs 7-bit .*--bits 8"):
        quantize(model, QuantConfig(activations="dynamic"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize(nn.Sequential(nn.Linear(16, 8)), QuantConfig())  # weight-only: 8 bits, nothing to say
        monkeypatch.setattr(config, "integer_weight_bits", lambda: 8)  # VNNI: auto keeps 8
        monkeypatch.setattr(select, "integer_weight_bits", lambda: 8)
        quantize(nn.Sequential(nn.Linear(16, 8)), QuantConfig(activations="dynamic"))
