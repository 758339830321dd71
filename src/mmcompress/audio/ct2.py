"""Reference transcripts from CTranslate2's own Whisper runtime (float32 or int8 kernels), fed the
same log-mel features as the PyTorch model, so both can be compared word for word."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmcompress.audio.features import log_mel
from mmcompress.audio.speech import Utterance
from mmcompress.errors import ModelError

START, NO_TIMESTAMPS = "<|startoftranscript|>", "<|notimestamps|>"


def ct2_transcribe(
    folder: str | Path,
    utterances: list[Utterance],
    compute_type: str = "float32",
    threads: int = 1,
    max_length: int = 448,
) -> list[str]:
    """Greedy transcripts by `ctranslate2.models.Whisper` (English, no timestamps).

    Args:
        folder: a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json).
        utterances: recordings (16 kHz waveforms).
        compute_type: CTranslate2's compute type: "float32", "int8" (int8 weights and GEMMs), ...
        threads: intra-op threads.
        max_length: most tokens per transcript.

    Example:
        >>> ct2_transcribe(packaged_whisper_path(), load_real_speech()[:1], compute_type="int8")
        ['And Mr. John Dashwood had then leisure to consider how much there might be ...']
    """
    try:
        import ctranslate2
        from tokenizers import Tokenizer
    except ImportError:
        raise ModelError("reference transcripts need 'pip install ctranslate2'") from None
    folder = Path(folder)
    runtime = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type=compute_type, intra_threads=threads)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt = [tokenizer.token_to_id(START), tokenizer.token_to_id(NO_TIMESTAMPS)]
    texts = []
    for utt in utterances:
        features = log_mel(utt.audio.float().reshape(1, -1), runtime.n_mels, 3000).numpy()
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        result = runtime.generate(view, [prompt], beam_size=1, max_length=max_length)
        texts.append(tokenizer.decode(result[0].sequences_ids[0]).strip())
    return texts
