"""`real-speech`: real English speech for speech-recognition models (Whisper), offline.

- test: the 10 transcribed recordings of Debian's pocketsphinx-testdata (5 LibriVox sentences,
  5 playing-card names), scored by corpus word error rate (`audio.speech_task.SpeechTask`).
- train (calibration and repair): the package's 4 other real recordings (no transcript: the task
  labels them with the float model's own transcript) and `SENTENCES` sentences of Python-docs
  prose read by espeak-ng with their text. Each is one item, padded to Whisper's 30 s window as
  a test clip is: calibration must see what the model will run on. Packed into 29 s windows (23
  items, almost no silence), W4 g128 GPTQ calibrated on them gave WER 0.196-0.239; one utterance
  per window, 0.120-0.130 (float 0.120; docs/benchmarks.md, "Whisper tiny.en through the command
  line").

No train item is a test recording. Synthesized speech is cached like the spoken digits.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mmcompress.audio.speech import Utterance, load_real_speech, load_unlabeled_speech
from mmcompress.data.prose import prose_sentences
from mmcompress.errors import DataError

SENTENCES = 96  # read sentences in the train split (1 to 10 s each)
FIRST_SENTENCE = 300  # prose_sentences()[300:396] (the MiniLM benchmark calibrates a text model on 200-455)
VOICES = ("en-us", "en", "en-gb-x-rp")
CACHE_VERSION = 1


class SpeechClips(Sequence):
    """Recordings with transcripts (`Utterance`: id, 16 kHz waveform, text; text "" when unknown).

    Example:
        >>> clips = load_dataset("real-speech", "test")
        >>> clips[1].text
        'he was not an ill disposed young man'
    """

    def __init__(self, utterances: Sequence[Utterance], name: str = "real-speech") -> None:
        self.utterances, self.name = list(utterances), name

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]

    def subset(self, limit: int | None) -> SpeechClips:
        """The first `limit` recordings (all when None)."""
        return self if limit is None or limit >= len(self) else SpeechClips(self.utterances[:limit], self.name)


def load_real_speech_split(split: str = "test", cache_dir: Path | None = None) -> SpeechClips:
    """One split of `real-speech` (see the module docstring).

    Example:
        >>> [u.id for u in load_real_speech_split("test")][:2]
        ['librivox/1089-134686-0000', 'librivox/1089-134686-0007']
    """
    if split == "test":
        return SpeechClips(load_real_speech())
    if split != "train":
        raise DataError(f"unknown split {split!r}; valid splits: train, test")
    return SpeechClips([*load_unlabeled_speech(), *read_sentences(cache_dir)])


def read_sentences(cache_dir: Path | None = None) -> list[Utterance]:
    """`SENTENCES` prose sentences read by espeak-ng (three voices, speeds 140-180), with their text.

    Example:
        >>> read_sentences()[0].text == prose_sentences(FIRST_SENTENCE + 1)[-1]
        True
    """
    from mmcompress.core.io import atomic_write_bytes
    from mmcompress.data.spoken_digits import synthesize
    from mmcompress.models.cache import default_cache_dir

    texts = prose_sentences(FIRST_SENTENCE + SENTENCES)[FIRST_SENTENCE:]
    name = f"read-sentences-v{CACHE_VERSION}-{FIRST_SENTENCE}-{SENTENCES}.pt"  # which sentences: the audio's text
    path = (cache_dir or default_cache_dir()) / "data" / name
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return [_utterance(i, text, wave) for i, (text, wave) in enumerate(zip(texts, saved, strict=True))]
        except Exception:  # a damaged cache file is rebuilt
            path.unlink()
    settings = [(text, VOICES[i % 3], 140 + 10 * (i % 5), 40 + 5 * (i % 5)) for i, text in enumerate(texts)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # espeak-ng runs as separate processes
        waves = [(w.clamp(-1, 1) * 32767).round().to(torch.int16) for w in pool.map(lambda s: synthesize(*s), settings)]
    buffer = io.BytesIO()
    torch.save(waves, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return [_utterance(i, text, wave) for i, (text, wave) in enumerate(zip(texts, waves, strict=True))]


def _utterance(i: int, text: str, pcm: torch.Tensor) -> Utterance:
    return Utterance(f"espeak/{i}", pcm.float() / 32767.0, text)
