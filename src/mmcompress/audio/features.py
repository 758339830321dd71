"""Whisper-style log-mel spectrograms in pure PyTorch (16 kHz audio, 25 ms window, 10 ms hop)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from mmcompress.core.extras import require

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) Slaney-style mel filter bank (the one Whisper uses)."""
    require("transformers", "hf", "Hugging Face models")
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
        max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )  # fmt: skip
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))


def log_mel(waveforms: torch.Tensor, n_mels: int = 80, frames: int | None = None) -> torch.Tensor:
    """(B, T) float waveforms at 16 kHz -> (B, n_mels, frames) Whisper-normalised log-mel.

    Audio is zero-padded or cut to `frames` * 160 samples first (Whisper: 3000 frames = 30 s).

    Example:
        >>> log_mel(torch.zeros(2, 16000), n_mels=40, frames=100).shape
        torch.Size([2, 40, 100])
    """
    if waveforms.dim() != 2:
        raise ValueError(f"log_mel expects (batch, samples) waveforms, got shape {tuple(waveforms.shape)}")
    if frames is not None:
        samples = frames * HOP
        waveforms = torch.nn.functional.pad(waveforms, (0, max(0, samples - waveforms.shape[1])))[:, :samples]
    window = torch.hann_window(N_FFT, device=waveforms.device)
    spec = torch.stft(waveforms.float(), N_FFT, HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (B, F, frames)
    mel = torch.einsum("bft,fm->bmt", power, mel_filters(n_mels).to(waveforms.device))
    logs = mel.clamp_min(1e-10).log10()
    logs = torch.maximum(logs, logs.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (logs + 4.0) / 4.0


def pad_waveforms(waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms to one length: (B, T) audio and its (B, T) 0/1 mask.

    Example:
        >>> audio, mask = pad_waveforms([torch.ones(3), torch.ones(5)])
        >>> mask.sum(1).tolist()
        [3, 5]
    """
    if not waveforms:
        raise ValueError("no waveforms to pad")
    length = max(int(w.numel()) for w in waveforms)
    audio = torch.zeros(len(waveforms), length)
    mask = torch.zeros(len(waveforms), length, dtype=torch.long)
    for i, w in enumerate(waveforms):
        audio[i, : w.numel()] = w.float().flatten()
        mask[i, : w.numel()] = 1
    return audio, mask
