"""Audio modality: log-mel features, synthesized spoken digits, real speech + WER, the fusion model."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from mmcompress import quantize
from mmcompress.audio.features import log_mel, pad_waveforms
from mmcompress.audio.normalize import normalize_english
from mmcompress.audio.speech import load_real_speech, transcribe, word_error_rate
from mmcompress.data import spoken_digits
from mmcompress.errors import DataError
from mmcompress.models.audio import ImageAudioFusion
from mmcompress.models.hf.tiny import tiny_model
from mmcompress.models.minilm import load_minilm_tokenizer
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
needs_speech = pytest.mark.skipif(
    not spoken_digits.Path("/usr/share/pocketsphinx/test/data").is_dir(), reason="pocketsphinx-testdata missing"
)


def test_log_mel_puts_a_higher_tone_in_a_higher_band():
    t = torch.arange(16000) / 16000
    low, high = torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 3000 * t)
    mel = log_mel(torch.stack([low, high]), n_mels=40, frames=100)
    assert mel.shape == (2, 40, 100)
    peak = mel.mean(2).argmax(1)
    assert int(peak[0]) < int(peak[1])
    audio, mask = pad_waveforms([low[:100], high[:300]])
    assert audio.shape == (2, 300) and mask.sum().item() == 400


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    train = spoken_digits.load_spoken_digits("train", cache_dir=cache, limit=160)
    test = spoken_digits.load_spoken_digits("test", cache_dir=cache, limit=60)
    return cache, train, test


@needs_espeak
def test_spoken_digits_are_real_cached_speech_with_unheard_test_voices(spoken, monkeypatch):
    cache, train, test = spoken
    assert train.audio.shape == (160, 16000) and len(test) == 60
    assert (train.audio.float().abs().amax(1) > 1000).all()  # every clip holds sound
    variants = {s.split("+")[1] for s in test.speakers}
    assert variants <= set(spoken_digits.VARIANTS["test"]) and not variants & set(spoken_digits.VARIANTS["train"])
    assert torch.equal(train.labels, spoken_digits.load_digits("train").labels[:160])
    monkeypatch.setattr(spoken_digits, "synthesize", lambda *a: pytest.fail("cache not used"))
    again = spoken_digits.load_spoken_digits("test", cache_dir=cache, limit=60)
    assert torch.equal(again.audio, test.audio)
    inputs, label = test[3]
    assert inputs["audio"].shape == (40, 100) and inputs["image"].shape == (1, 28, 28)


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        spoken_digits.load_spoken_digits("test", cache_dir=tmp_path, limit=3)


@needs_espeak
def test_fusion_model_trains_and_keeps_its_predictions_under_w8a8_on_every_tower(spoken):
    _, train, test = spoken
    model = ImageAudioFusion()
    fit(model, ClassificationTask(), train, TrainConfig(epochs=20, batch_size=32, lr=3e-3), progress=False)
    task = ClassificationTask()
    accuracy = task.evaluate(model, test)["accuracy"]
    assert accuracy > 0.5  # 10 classes: chance is 0.1
    quantized = copy.deepcopy(model)
    calib = [train.inputs(torch.arange(i, i + 32)) for i in range(0, 128, 32)]
    record = quantize(quantized, {"_default": {"weight_bits": 7, "activations": "static"}}, calib=calib)
    towers = {model.adapter().modality_of(n) for n in record.modules}
    assert towers == {"image", "audio", "fusion"}
    with torch.no_grad():
        x = test.inputs(torch.arange(len(test)))
        agree = (model(**x).argmax(1) == quantized(**x).argmax(1)).float().mean()
    assert agree > 0.9


def test_word_error_rate():
    assert word_error_rate(["the cat sat"], ["the cat sat"]) == 0
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5  # one substitution, one deletion
    assert word_error_rate(["Hello, world!"], ["hello world"]) == 0
    with pytest.raises(ValueError, match="2 references but 1"):
        word_error_rate(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Mr. Dashwood won't play, ill-disposed!", "mister dashwood will not play ill disposed"),
        ("ten of clubs, twenty one, five five", "10 of clubs 21 5 5"),
        ("two hundred and five; three thousand four hundred", "205 3400"),
        ("rock and roll, one and two", "rock and roll 1 and 2"),
        ("It's 3.5 or 1,000 [music] (laughs) um yes", "it's 3.5 or 1000 yes"),
        ("'quoted' words, she'd go", "quoted words she would go"),
    ],
)
def test_english_normalizer(text, normalized):
    assert normalize_english(text) == normalized


def test_normalized_wer_forgives_spelling_but_not_wrong_words():
    refs = ["and mister john dashwood had ten of clubs", "five five"]
    hyps = ["And Mr. John Dashwood had 10 of clubs.", "5 5"]
    assert word_error_rate(refs, hyps) == 4 / 10  # mister/mr, ten/10 and five/5 twice
    assert word_error_rate(refs, hyps, normalize=True) == 0
    assert word_error_rate(refs, ["And Mr. John Dashwood had 10 of clothes.", "5"], normalize=True) == 2 / 10


@needs_speech
def test_real_speech_transcribes_and_mild_quantization_keeps_the_transcripts():
    speech = load_real_speech()
    assert len(speech) == 10 and speech[1].text == "he was not an ill disposed young man"
    assert all(u.audio.abs().max() > 0.05 for u in speech)
    whisper = tiny_model("whisper")  # random weights: the transcripts are not English
    whisper.mmcompress_tokenizer = load_minilm_tokenizer()
    float_texts = transcribe(whisper, speech[:4], max_new_tokens=5)
    assert word_error_rate([u.text for u in speech[:4]], float_texts) >= 0
    quantize(whisper, {"_default": {"weight_bits": 8}})
    assert transcribe(whisper, speech[:4], max_new_tokens=5) == float_texts


@needs_speech
def test_speech_batches_need_transcripts_and_teacher_forcing_reads_the_generation_prefix():
    from transformers import WhisperTokenizerFast

    from mmcompress.audio.speech import load_unlabeled_speech
    from mmcompress.data.collate import calibration_batches, speech_batches
    from mmcompress.models.hf.whisper_ct2 import packaged_whisper_path

    unlabeled = load_unlabeled_speech()
    assert len(unlabeled) == 4 and all(u.audio.abs().max() > 0.1 for u in unlabeled)
    with pytest.raises(DataError, match="without a transcript"):
        speech_batches(unlabeled)
    speech = load_real_speech()[:3]
    raw = speech_batches(speech, batch_size=2)
    assert [len(b["audio"]) for b in raw] == [2, 1] and raw[1]["text"] == [speech[2].text]
    whisper = tiny_model("whisper")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(packaged_whisper_path() / "tokenizer.json"))
    whisper.mmcompress_tokenizer = tokenizer
    batch = calibration_batches(whisper, raw)[0]
    want = tokenizer.prefix_tokens + tokenizer.encode(" " + speech[1].text, add_special_tokens=False)
    ids, mask = batch["decoder_input_ids"][1], batch["decoder_attention_mask"][1]
    assert ids[mask.bool()].tolist() == want  # one start token, words with their leading space
    assert tokenizer.convert_ids_to_tokens(want[2]) == "Ġhe" and not mask[len(want) :].any()
    assert (ids[len(want) :] == whisper.config.eos_token_id).all()


@needs_speech
def test_speech_batches_pack_short_recordings_into_whisper_windows():
    from mmcompress.data.collate import speech_batches

    speech = load_real_speech()
    cards = speech[5:]
    packed = speech_batches(cards, batch_size=8, pack_seconds=29)
    assert len(packed) == 1 and len(packed[0]["audio"]) == 1  # five card names fit one 30 s window
    assert packed[0]["audio"][0].numel() == sum(u.audio.numel() for u in cards)
    assert packed[0]["text"][0] == " ".join(u.text for u in cards)
    windows = speech_batches(speech, batch_size=1, pack_seconds=10)[0]["audio"][0]
    assert windows.numel() <= 10 * 16000 or windows.numel() == speech[0].audio.numel()
    assert sum(len(b["audio"]) for b in speech_batches(speech, batch_size=1, pack_seconds=10)) > 2
