"""Speech recognition as a task: word error rate of greedy transcripts, distillation from the float
model on teacher-forced transcripts (`real-speech`, `--task wer`).

Example:
    >>> task = SpeechTask(copy.deepcopy(whisper).eval())
    >>> task.evaluate(quantized, load_dataset("real-speech", "test"))
    {'wer': 0.12, 'wer_normalized': 0.05, 'empty_transcripts': 0.0}
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from mmcompress.audio.speech import Utterance, pack, transcribe, word_error_rate
from mmcompress.core.batches import ModelCall, call_model
from mmcompress.distill.seq2seq import masked_kl
from mmcompress.errors import DataError, ModelError
from mmcompress.models.adapter import adapter_for
from mmcompress.train.tasks import Task

PACKED_PASSES = ("prune_structured", "finetune", "distill", "tune_quantized")  # rank units and train on full windows
PACK_SECONDS = 29.0  # of speech per packed window (Whisper encodes 30 s)
MAX_NEW_TOKENS = 224  # Whisper's own sample length (half its 448 positions): a packed 29 s window needs ~80


class SpeechTask(Task):
    """Items are `Utterance`s (id, 16 kHz waveform, transcript). Batches are the model's
    teacher-forced inputs (log-mel features + the transcript's decoder tokens); a recording without
    a transcript gets the reference model's own (once, cached by id). The loss is KL(reference ||
    model) of the next-token distributions at the transcript's positions (padding masked out), so
    fine-tuning distils from the float model; metrics are corpus WER of greedy transcripts (raw and
    normalized; against the reference's transcript where a recording has none, e.g. the data a
    fine-tune keeps its best epoch on) and the share of empty transcripts.

    Args:
        reference: the float model (a speech-recognition model with an adapter and a tokenizer,
            e.g. `load_model("hf:whisper-tiny.en")`), kept frozen.

    Example:
        >>> task = SpeechTask(copy.deepcopy(whisper).eval())
        >>> inputs, _ = task.batch(load_dataset("real-speech", "train"), torch.arange(2))
        >>> sorted(inputs)
        ['decoder_attention_mask', 'decoder_input_ids', 'input_features']
    """

    primary_metric = "wer"
    higher_is_better = False
    pass_defaults = {  # 30 s windows are heavy: few per batch; AdamW at 5e-4 knocks a pretrained decoder off
        "finetune": {"batch_size": 2, "lr": 1e-4},
        "prune_structured": {"data_batch_size": 4, "ablation_batches": 1},  # 72 heads x 1 batch of 4 windows
        "prune": {"data_batch_size": 4},
        **{p: {"calib_batch_size": 8} for p in ("quantize", "analyze_quant", "quantize_mixed")},  # memory only
    }

    def __init__(self, reference: nn.Module) -> None:
        check_speech_model(reference)
        self.reference = reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self._labels: dict[str, str] = {}
        self._packed: dict[int, tuple[Any, list[Utterance]]] = {}

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        clips = utterances_of(dataset, [int(i) for i in index])
        texts = self.transcripts(clips)
        return adapter_for(self.reference).prepare({"audio": [u.audio for u in clips], "text": texts}), None

    def transcripts(self, clips: list[Utterance]) -> list[str]:
        """Each recording's transcript, or the reference model's own where it has none (cached by id)."""
        missing = [u for u in clips if not u.text.strip() and u.id not in self._labels]
        if missing:
            labels = transcribe(self.reference, missing, MAX_NEW_TOKENS)
            self._labels.update(zip([u.id for u in missing], labels, strict=True))
        return [u.text.strip() or self._labels[u.id] for u in clips]

    def pass_data(self, pass_name: str, dataset: Any) -> Any:
        """Training and structured pruning get consecutive recordings packed into windows of
        `PACK_SECONDS` (each labelled first, so a window's text covers all its speech): a step sees
        ~10x the speech of a 3 s clip padded to 30 s, and head ablation ranks on speech rather
        than silence. Calibration (quantize, unstructured prune) keeps one recording per item, as
        the clips it will run on are. Measured on Whisper tiny.en (docs/benchmarks.md, "Whisper
        tiny.en through the command line"): 25% heads + repair WER 0.098 on windows vs 0.228 on
        single recordings; W4 GPTQ 0.130 on single recordings vs 0.239 on windows.

        Example:
            >>> len(task.pass_data("finetune", load_dataset("real-speech", "train")))
            23
        """
        if pass_name not in PACKED_PASSES:
            return dataset
        key = id(dataset)
        if key not in self._packed:
            clips = utterances_of(dataset, range(len(dataset)))
            labelled = [Utterance(u.id, u.audio, t) for u, t in zip(clips, self.transcripts(clips), strict=True)]
            self._packed[key] = (dataset, pack(labelled, PACK_SECONDS))  # the dataset is held so its id stays its own
        return self._packed[key][1]

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        with torch.no_grad():
            teacher = call_model(self.reference, inputs).logits
        student = call_model(model, inputs).logits
        mask = inputs["decoder_attention_mask"].bool()
        return masked_kl(teacher[mask].float().log_softmax(-1).to(student.device), student[mask])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 0) -> dict[str, float]:
        clips = utterances_of(dataset, range(len(dataset)))
        references, texts = self.transcripts(clips), transcribe(model.eval(), clips, MAX_NEW_TOKENS)
        empty = sum(not t.strip() for t in texts)
        if empty * 2 >= len(texts):
            warnings.warn(
                f"{empty} of {len(texts)} transcripts are empty: the model no longer transcribes (the decoder "
                "ends at once); a compression this strong needs a repair or a gentler setting",
                UserWarning,
                stacklevel=2,
            )
        return {
            "wer": word_error_rate(references, texts),
            "wer_normalized": word_error_rate(references, texts, normalize=True),
            "empty_transcripts": empty / len(texts),
        }

    def latency_call(self, dataset: Any) -> ModelCall | None:
        """Greedy transcription of the first test clip (what a user of a speech recognizer waits for)."""
        clip = utterances_of(dataset, [0]) if len(dataset) else []
        return ModelCall(lambda model: transcribe(model, clip), "greedy transcription of 1 clip") if clip else None


def utterances_of(dataset: Any, index: Any) -> list[Utterance]:
    """The recordings at `index`, or a DataError naming what the items are instead."""
    clips = [dataset[i] for i in index]
    wrong = next((c for c in clips if not isinstance(c, Utterance)), None)
    if wrong is not None:
        raise DataError(
            f"the WER task reads recordings with transcripts (mmcompress.audio.speech.Utterance, e.g. the "
            f"'real-speech' dataset); this data's items are {type(wrong).__name__}"
        )
    return clips


def check_speech_model(model: nn.Module) -> None:
    """A ModelError unless the model can transcribe: an adapter that prepares audio and a tokenizer."""
    try:
        prepare = adapter_for(model).prepare
    except Exception:  # noqa: BLE001 - no adapter at all: the same answer
        prepare = None
    if prepare is None or getattr(model, "mmcompress_tokenizer", None) is None or not hasattr(model, "generate"):
        raise ModelError(
            f"speech recordings and the WER task need a speech-recognition model with a tokenizer "
            f"(e.g. hf:whisper-tiny.en); {type(model).__name__} is not one"
        )
