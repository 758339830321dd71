"""Real speech with transcripts (Debian's pocketsphinx-testdata) and word error rate."""

from __future__ import annotations

import contextlib
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcompress.audio.normalize import normalize_english
from mmcompress.errors import DataError

SAMPLE_RATE = 16_000
SPEECH_DIR = Path("/usr/share/pocketsphinx/test/data")
SETS = ("librivox", "cards")
UNLABELED = ("goforward.raw", "numbers.raw", "something.raw", "tidigits/dhd.2934z.raw")  # 16-bit 16 kHz PCM


@dataclass(frozen=True)
class Utterance:
    """One recording: id, 16 kHz float waveform and its reference transcript (lower case)."""

    id: str
    audio: torch.Tensor
    text: str


def read_wav(path: Path) -> torch.Tensor:
    """A 16-bit mono 16 kHz WAV file as a float waveform in [-1, 1]."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != 16000:
            raise DataError(f"{path}: expected 16-bit mono 16 kHz audio")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return torch.from_numpy(pcm.astype(np.float32) / 32768.0)


def load_real_speech(root: Path = SPEECH_DIR) -> list[Utterance]:
    """The 10 transcribed recordings of pocketsphinx-testdata (5 LibriVox sentences, 5 card names).

    Example:
        >>> speech = load_real_speech()
        >>> speech[1].text
        'he was not an ill disposed young man'
    """
    if not root.is_dir():
        raise DataError(f"real speech is missing ({root}); install it with 'apt-get install pocketsphinx-testdata'")
    out = []
    for name in SETS:
        folder = root / name
        transcript = folder / ("transcription" if name == "librivox" else f"{name}.transcription")
        for line in transcript.read_text().splitlines():
            words, _, uid = line.rpartition("(")
            uid = uid.strip(") ")
            text = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
            out.append(Utterance(f"{name}/{uid}", read_wav(folder / f"{uid}.wav"), text))
    return out


def load_unlabeled_speech(root: Path = SPEECH_DIR) -> list[Utterance]:
    """The 4 other real recordings of pocketsphinx-testdata (headerless 16-bit 16 kHz PCM, 2.4-4 s:
    commands and digit strings), without transcripts (text ""): calibration audio disjoint from
    `load_real_speech`. `pseudo_label` gives them a model's own transcripts.

    Example:
        >>> [round(u.audio.numel() / 16000, 1) for u in load_unlabeled_speech()]
        [2.8, 4.0, 3.0, 2.4]
    """
    if not root.is_dir():
        raise DataError(f"real speech is missing ({root}); install it with 'apt-get install pocketsphinx-testdata'")
    out = []
    for name in UNLABELED:
        pcm = np.fromfile(root / name, dtype="<i2")
        out.append(Utterance(name.rpartition(".")[0], torch.from_numpy(pcm.astype(np.float32) / 32768.0), ""))
    return out


def pseudo_label(model: torch.nn.Module, utterances: list[Utterance]) -> list[Utterance]:
    """The utterances with the model's own greedy transcripts as text (calibration targets).

    Example:
        >>> pseudo_label(whisper, load_unlabeled_speech())[0].text
        'Go forward 10 meters.'
    """
    texts = transcribe(model, utterances)
    return [Utterance(u.id, u.audio, t) for u, t in zip(utterances, texts, strict=True)]


def pack(utterances: Sequence[Utterance], seconds: float) -> list[Utterance]:
    """Consecutive utterances joined into windows of at most `seconds` (a longer one stays alone),
    their texts joined by spaces.

    Example:
        >>> [len(u.audio) for u in pack([Utterance("a", torch.zeros(8), "a")] * 3, 16 / 16000)]
        [16, 8]
    """
    limit, windows = int(seconds * SAMPLE_RATE), []
    for utt in utterances:
        if windows and sum(len(u.audio) for u in windows[-1]) + len(utt.audio) <= limit:
            windows[-1].append(utt)
        else:
            windows.append([utt])
    return [
        Utterance("+".join(u.id for u in w), torch.cat([u.audio for u in w]), " ".join(u.text for u in w))
        for w in windows
    ]


def word_error_rate(references: list[str], hypotheses: list[str], normalize: bool = False) -> float:
    """Corpus WER: (substitutions + deletions + insertions) / reference words.

    Args:
        references, hypotheses: one transcript each per recording.
        normalize: False ("raw" WER): only case and punctuation are ignored (a hyphen separates
            words). True: both sides go through `normalize_english` first (titles, contractions,
            spelled numbers -> digits, hesitations; see `mmcompress.audio.normalize`), in the
            spirit of Whisper's EnglishTextNormalizer.

    Example:
        >>> word_error_rate(["the cat sat"], ["the cat sat down"])
        0.3333333333333333
        >>> word_error_rate(["ten of clubs"], ["10 of clubs."], normalize=True)
        0.0
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        if normalize:
            ref, hyp = normalize_english(ref), normalize_english(hyp)
        r, h = _words(ref), _words(hyp)
        errors += _edit_distance(r, h)
        words += len(r)
    if words == 0:
        raise ValueError("the references hold no words")
    return errors / words


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c in " '" else " " for c in text.lower()).split()


def _edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


def transcribe(
    model: torch.nn.Module,
    utterances: list[Utterance],
    max_new_tokens: int = 64,
    decoder: str = "auto",
    attention_dtype: str | torch.dtype | None = None,
) -> list[str]:
    """Greedy transcripts of a Whisper-style model (its adapter builds the log-mel inputs; its
    attached tokenizer decodes).

    decoder "auto": English-only Whisper-style models without timestamps decode with
    `greedy_transcribe` (a static key/value cache, the same tokens as `generate`, a fraction of its
    per-token overhead), other models with `model.generate`; "generate" forces transformers'
    `generate`; "greedy" forces the loop (English, no timestamps). attention_dtype ("bfloat16",
    "auto", "float32"/None): the greedy loop's encoder attention precision (`greedy_transcribe`).

    Example:
        >>> whisper = load_model("hf:/models/whisper-tiny.en")
        >>> speech = load_real_speech()
        >>> word_error_rate([u.text for u in speech], transcribe(whisper, speech))
    """
    from mmcompress.audio.greedy import greedy_transcribe, matches_generate
    from mmcompress.models.adapter import adapter_for

    if decoder not in ("auto", "greedy", "generate"):
        raise ValueError(f"decoder {decoder!r} is not one of 'auto', 'greedy', 'generate'")
    adapter, tokenizer = adapter_for(model), getattr(model, "mmcompress_tokenizer", None)
    if adapter.prepare is None or tokenizer is None:
        raise DataError("transcribe needs a speech model with an adapter and a tokenizer (load it with 'hf:...')")
    greedy = decoder == "greedy" or (decoder == "auto" and matches_generate(model))
    if attention_dtype not in (None, "float32", torch.float32) and not greedy:
        raise ValueError(f"attention_dtype {attention_dtype!r} needs the greedy decoder (decoder='greedy')")
    texts = []
    for i, utt in enumerate(utterances):
        inputs = adapter.prepare({"audio": [utt.audio]})
        inputs.pop("decoder_input_ids", None)
        with torch.no_grad():
            if greedy:
                ids = greedy_transcribe(model, inputs["input_features"], max_new_tokens, attention_dtype)
            else:  # transformers' warnings are shown for the first clip, not repeated for every one
                with _transformers_quiet() if i else contextlib.nullcontext():
                    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts.append(tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip())
    return texts


@contextlib.contextmanager
def _transformers_quiet():
    """transformers logs errors only, inside the block."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
