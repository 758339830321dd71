"""Spoken digits: "zero".."nine" synthesized with espeak-ng (several voices, speeds and pitches),
paired with scikit-learn digit images of the same class. Generated once and cached.

Train and test use disjoint voice variants, so test speakers are unheard in training.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcompress.core.extras import require
from mmcompress.data.digits import DIGIT_NAMES, load_digits
from mmcompress.data.fashion_mnist import to_float_image
from mmcompress.errors import DataError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = {"train": ("m1", "m3", "m5", "f1", "f3", "f5", "klatt"), "test": ("m2", "m4", "f2", "f4", "klatt2")}
SECONDS = 1.0
SAMPLE_RATE = 16_000
N_MELS, FRAMES = 40, 100
CACHE_VERSION = 1


def espeak_binary() -> str:
    """Path of espeak-ng, or a DataError saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError(
            "espeak-ng is not installed, so spoken digits cannot be synthesized; install it with "
            "'apt-get install espeak-ng' (Debian/Ubuntu) or 'brew install espeak-ng' (macOS)"
        )
    return path


def synthesize(word: str, voice: str, speed: int, pitch: int) -> torch.Tensor:
    """One utterance as a 16 kHz float waveform in [-1, 1] (espeak-ng speaks at 22,050 Hz).

    Example:
        >>> synthesize("seven", "en-us+f3", 160, 50).shape[0] > 4000
        True
    """
    resample_poly = require("scipy.signal", "data", "spoken digits").resample_poly

    cmd = [espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    wav = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
    if len(wav) <= 44 or wav[:4] != b"RIFF":
        raise DataError(f"espeak-ng returned no audio for {word!r} with voice {voice!r}")
    pcm = np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return torch.from_numpy(resample_poly(pcm, 320, 441).astype(np.float32))


def _fit(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Trim leading/trailing silence, then centre-pad or cut to `samples`."""
    loud = (wave.abs() > 0.01).nonzero()
    if len(loud):
        wave = wave[int(loud[0]) : int(loud[-1]) + 1]
    wave = wave[:samples]
    left = (samples - len(wave)) // 2
    return torch.nn.functional.pad(wave, (left, samples - len(wave) - left))


@dataclass
class SpokenDigits(torch.utils.data.Dataset):
    """Digit image + spoken digit pairs. Items: ({"image", "audio"}, label); audio as log-mel.

    Attributes:
        images: (N, 28, 28) uint8 scikit-learn digits (upsampled).
        audio: (N, 16000) int16 waveforms (1 s, 16 kHz).
        labels: (N,) digit classes; `speakers` the espeak-ng voice of each clip.

    Example:
        >>> ds = load_spoken_digits("test")
        >>> inputs, label = ds[0]; inputs["audio"].shape
        torch.Size([40, 100])
    """

    images: torch.Tensor
    audio: torch.Tensor
    labels: torch.Tensor
    speakers: list[str]
    class_names: tuple[str, ...] = DIGIT_NAMES
    name: str = "spoken-digits"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int):
        inputs = self.inputs(torch.tensor([i]))
        return {k: v[0] for k, v in inputs.items()}, int(self.labels[i])

    def subset(self, limit: int | None) -> SpokenDigits:
        """First `limit` samples (all when None)."""
        if limit is None or limit >= len(self):
            return self
        return SpokenDigits(self.images[:limit], self.audio[:limit], self.labels[:limit], self.speakers[:limit])

    def waveforms(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 16000) float waveforms."""
        return self.audio[index].float() / 32767.0

    def inputs(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs of several samples: image (B, 1, 28, 28) and audio log-mel (B, 40, 100)."""
        from mmcompress.audio.features import log_mel

        return {"image": to_float_image(self.images[index]), "audio": log_mel(self.waveforms(index), N_MELS, FRAMES)}


def load_spoken_digits(split: str = "train", cache_dir: Path | None = None, limit: int | None = None) -> SpokenDigits:
    """The spoken-digit pairs of one split (synthesized on first use, then read from the cache).

    Each scikit-learn digit image of the split gets its own utterance of its class: a voice
    (accent + variant), speed and pitch drawn with a fixed seed. `limit` keeps the first N pairs
    (and synthesizes only those).

    Example:
        >>> load_spoken_digits("train", limit=20).audio.shape
        torch.Size([20, 16000])
    """
    from mmcompress.core.io import atomic_write_bytes
    from mmcompress.models.cache import default_cache_dir

    if split not in VARIANTS:
        raise DataError(f"unknown split {split!r}; valid splits: train, test")
    digits = load_digits(split)
    n = len(digits) if limit is None else min(limit, len(digits))
    path = (cache_dir or default_cache_dir()) / "data" / f"spoken-digits-v{CACHE_VERSION}-{split}-{n}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return SpokenDigits(digits.images[:n], saved["audio"], digits.labels[:n], saved["speakers"])
        except Exception:  # a damaged cache file is rebuilt
            path.unlink()
    import io
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng({"train": 11, "test": 12}[split])
    settings = [
        (WORDS[int(digits.labels[i])], f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS[split])}",
         int(rng.integers(120, 221)), int(rng.integers(20, 81)))
        for i in range(n)
    ]  # fmt: skip
    samples = int(SECONDS * SAMPLE_RATE)
    with ThreadPoolExecutor(max_workers=4) as pool:  # espeak-ng runs as separate processes
        waves = list(pool.map(lambda s: _fit(synthesize(*s), samples), settings))
    audio = (torch.stack(waves).clamp(-1, 1) * 32767).round().to(torch.int16)
    speakers = [voice for _, voice, _, _ in settings]

    buffer = io.BytesIO()
    torch.save({"audio": audio, "speakers": speakers}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return SpokenDigits(digits.images[:n], audio, digits.labels[:n], speakers)
