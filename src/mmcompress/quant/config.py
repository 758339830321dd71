"""Quantization settings: `QuantConfig` (weights, activations, method) and `GPTQConfig`, validated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmcompress.core.config import FrozenConfig
from mmcompress.core.cpu import integer_weight_bits
from mmcompress.quant.activations import ActSpec
from mmcompress.quant.codes import WeightGrid

ASYMMETRIC_MAX_BITS = 4  # scheme "auto": weight codes of this many bits or fewer get a zero point


class GPTQConfig(FrozenConfig):
    """GPTQ settings. The defaults are the field's best practice (GPTQ / AutoGPTQ `desc_act` with
    `static_groups`), chosen by measurement: on all-MiniLM-L6-v2 at W4 g128 (calibrated on 256
    prose sentences, scored on 200 unseen ones) act-order raised mean embedding cosine from 0.9787
    to 0.9821 (symmetric) and from 0.9853 to 0.9878 (asymmetric); on MobileNetV2 W4 per-channel
    top-1 agreement with float went from 0.594 to 0.672 (RTN: 0.082).

    Attributes:
        block_size: columns per lazy-batch block (128).
        damp: Hessian damping, a fraction of its mean diagonal (0.01).
        act_order: process columns by decreasing Hessian diagonal (on). Group steps are fixed from
            the original weight up front (static groups), so groups stay on contiguous columns and
            the storage layout and kernels are unchanged.

    Example:
        >>> GPTQConfig().act_order, GPTQConfig().damp
        (True, 0.01)
    """

    block_size: int = Field(128, ge=1)
    damp: float = Field(0.01, gt=0, le=1)
    act_order: bool = True


class QuantConfig(FrozenConfig):
    """Weight (and Linear input) quantization settings.

    Attributes:
        weight_bits: 2..8. Codes of fewer than 8 bits are bit-packed in the compact file format,
            so the measured size is the packed size. "auto" (the default): with activations, the
            widest codes this CPU's integer kernels cannot saturate (8 with VNNI/AMX or off x86, 7
            on AVX2 without VNNI: `core.cpu.integer_weight_bits`; one bit less when asymmetric;
            `quantize` records the choice under `info["integer_kernels"]`); weight-only, 8. Layers
            whose inputs stay float under activations (embedding tables, Conv1d, LSTM/GRU, and
            convolutions whose codes integer convolutions cannot take) run weight-only, so `quantize`
            gives them 8 bits (`weight_bits_auto` marks a config whose bits came from "auto").
        scheme: "symmetric" (zero point 0), "asymmetric" (an int8 zero point per step) or "auto"
            (the default): asymmetric for codes of `ASYMMETRIC_MAX_BITS` (4) bits or fewer, where 16
            levels cannot afford to waste half of them on a lopsided group's empty side (W4 g128 on
            all-MiniLM-L6-v2: GPTQ cosine 0.972 -> 0.982, RTN 0.931 -> 0.952; Whisper tiny.en with int8
            token tables, GPTQ WER 0.163 -> 0.120, float 0.120), symmetric above (what static inputs and
            the fastest integer kernels take).
        granularity: "per_channel" (a step per output channel / embedding row), "per_group"
            (a step per `group_size` inputs of a channel) or "per_tensor".
        group_size: inputs per step for "per_group"; must divide each layer's inputs per channel.
        observer: "minmax" (full range) or "mse" (per-step clipping ratio with least squared error;
            with method "gptq", the error weighted by each input's mean square. Measured at W4 g128, it
            did not help GPTQ: Whisper tiny.en WER 0.174 vs 0.163 with minmax steps, and on MiniLM
            layers the output error moved -5% to +40%: GPTQ's updates already absorb rounding error).
        activations: "none" (weight-only), "dynamic" (Linear inputs quantized per call) or
            "static" (Linear inputs quantized with a step fixed from calibration data). Static
            needs symmetric per-channel weights of 7 or 8 bits. Dynamic also takes grouped and
            low-bit weights (W4A8: 4-bit g128 codes on int8 GEMMs, one per group of inputs;
            asymmetric codes up to 7 bits, 6 on AVX2 without VNNI); Conv2d layers quantize their
            inputs (per tensor) only with symmetric per-channel 7/8-bit weights, else they stay
            weight-only with a warning.
            Embeddings stay weight-only. Use 7-bit weights on x86 CPUs without VNNI: their u8s8
            kernels add pairs of products in int16, which 8-bit weights overflow.
        act_granularity: "per_tensor" (one uint8 step per call, ONNX DynamicQuantizeLinear) or
            "per_token" (a symmetric step per token; robust to outlier tokens). Dynamic, Linear only.
        act_observer: range observer of "static": "minmax", "percentile", "mse", "kl" or "search"
            (per layer, the range whose quantization error changes the layer's *output* least,
            among the min/max range shrunk and the percentile range; a second calibration pass
            over the first 16 rows; see `range_search.py`).
        smoothquant: SmoothQuant migration strength alpha in (0, 1) (None: off). Divides each input
            channel by s_j = max|x_j|^alpha / max|w_j|^(1-alpha) and folds s into the weight, so
            activation outlier channels shrink; needs calibration data and activations. Linear
            layers only.
        clip_ratio: fraction of each step's range kept with observer "minmax" (see
            `analyze_quantization_error`, which searches it per layer).
        method: "rtn" (round to nearest) or "gptq" (needs calibration data; Linear and Conv2d;
            other layers fall back to rtn with a warning, and the record says so).
        gptq: GPTQ settings.
        layer_types: which layer types `_default`/regex/modality keys select: "linear", "conv"
            (Conv1d, Conv2d), "embedding", "recurrent" (LSTM, GRU: weight-only, a step per gate row).

    Example:
        >>> QuantConfig(weight_bits=4, granularity="per_group", group_size=128).symmetric
        False
    """

    weight_bits: int = Field(8, ge=2, le=8)
    scheme: Literal["auto", "symmetric", "asymmetric"] = "auto"
    granularity: Literal["per_channel", "per_group", "per_tensor"] = "per_channel"
    group_size: int = Field(128, ge=2)
    observer: Literal["minmax", "mse"] = "minmax"
    clip_ratio: float = Field(1.0, gt=0, le=1)
    activations: Literal["none", "dynamic", "static"] = "none"
    act_granularity: Literal["per_tensor", "per_token"] = "per_tensor"
    act_observer: Literal["minmax", "percentile", "mse", "kl", "search"] = "minmax"
    smoothquant: float | None = Field(None, gt=0, lt=1)
    method: Literal["rtn", "gptq"] = "rtn"
    gptq: GPTQConfig = GPTQConfig()
    weight_bits_auto: bool = False  # set by "auto" (weight_bits then holds the bits it resolved to)
    layer_types: tuple[Literal["linear", "conv", "embedding", "recurrent"], ...] = (
        "linear",
        "conv",
        "embedding",
        "recurrent",
    )

    @model_validator(mode="before")
    @classmethod
    def _auto_bits(cls, data):
        if isinstance(data, dict) and data.get("weight_bits", "auto") == "auto":  # not given: "auto" too
            with_activations = data.get("activations", "none") != "none"
            bits = integer_weight_bits() if with_activations else 8
            if with_activations and data.get("scheme") == "asymmetric":  # ("auto" is symmetric at 7-8 bits)
                bits -= 1  # codes minus their zero point span twice the range: one bit less
            data = {**data, "weight_bits": bits, "weight_bits_auto": True}
        return data

    @property
    def symmetric(self) -> bool:
        """Whether weight codes have no zero point ("auto": above `ASYMMETRIC_MAX_BITS` bits)."""
        return self.scheme == "symmetric" or (self.scheme == "auto" and self.weight_bits > ASYMMETRIC_MAX_BITS)

    @property
    def integer_channels(self) -> bool:
        """Symmetric per-channel 7/8-bit weight codes: what static inputs and integer convolutions need."""
        return self.weight_bits in (7, 8) and self.granularity == "per_channel" and self.symmetric

    @model_validator(mode="after")
    def _activations_fit_weights(self) -> QuantConfig:
        if self.activations == "static" and not self.integer_channels:
            raise ValueError(
                "activations 'static' needs weight_bits 7 or 8, granularity 'per_channel' and scheme 'symmetric'"
            )
        if self.activations == "dynamic" and not self.symmetric and self.weight_bits == 8:
            raise ValueError(
                "activations 'dynamic' with scheme 'asymmetric' needs weight_bits <= 7 (codes minus their "
                "zero point must fit the int8 kernels)"
            )
        if self.act_observer != "minmax" and self.activations == "dynamic":  # (weight-only: nothing to observe)
            raise ValueError(
                f"act_observer {self.act_observer!r} sets the fixed input range of activations 'static'; "
                f"activations {self.activations!r} has no range to observe"
            )
        if self.act_granularity == "per_token" and self.activations != "dynamic":
            raise ValueError("act_granularity 'per_token' needs activations 'dynamic'")
        if self.smoothquant is not None and self.activations == "none":
            raise ValueError("smoothquant migrates activation outliers: it needs activations 'dynamic' or 'static'")
        return self

    def act_spec(self) -> ActSpec | None:
        """The activation quantization these settings describe (None: weight-only)."""
        if self.activations == "none":
            return None
        return ActSpec(self.activations, self.act_granularity, self.act_observer)

    def grid(self) -> WeightGrid:
        """The WeightGrid these settings describe."""
        return WeightGrid(
            bits=self.weight_bits,
            symmetric=self.symmetric,
            group_size=self.group_size if self.granularity == "per_group" else None,
            per_tensor=self.granularity == "per_tensor",
            observer=self.observer,
            clip_ratio=self.clip_ratio,
        )
