"""`real-speech`: the real pocketsphinx recordings to test on, other real recordings and espeak-ng
sentences, one per item as the test clips are, to calibrate and repair on."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmcompress.audio.speech import SPEECH_DIR, Utterance, pack
from mmcompress.data.registry import list_datasets, load_dataset

needs_data = pytest.mark.skipif(
    not SPEECH_DIR.is_dir() or shutil.which("espeak-ng") is None, reason="needs pocketsphinx-testdata and espeak-ng"
)


def test_pack_joins_consecutive_recordings_up_to_the_window():
    clips = [Utterance(str(i), torch.full((n,), float(i)), f"w{i}") for i, n in enumerate((6, 4, 12, 3))]
    windows = pack(clips, 10 / 16000)
    assert [len(w.audio) for w in windows] == [10, 12, 3]  # 6 + 4; 12 alone (longer than a window); 3
    assert [w.text for w in windows] == ["w0 w1", "w2", "w3"] and windows[0].id == "0+1"
    assert torch.equal(windows[0].audio, torch.cat([clips[0].audio, clips[1].audio]))


@needs_data
def test_the_test_split_is_the_transcribed_recordings_and_train_never_holds_one():
    assert "real-speech" in list_datasets()
    test, train = load_dataset("real-speech", "test"), load_dataset("real-speech", "train")
    assert len(test) == 10 and all(u.text for u in test)
    assert test[1].text == "he was not an ill disposed young man"
    assert len(load_dataset("real-speech", "test", limit=2)) == 2
    assert all(len(u.audio) <= 30 * 16000 for u in train) and len(train) == 100  # each fits Whisper's window
    assert [u.text for u in train][:4] == [""] * 4 and train[0].id == "goforward"  # the task labels them
    assert all(u.text and u.id.startswith("espeak/") for u in train.utterances[4:])
    test_audio = [u.audio for u in test]
    for window in train:  # no test recording hides in a train window
        assert not any(len(a) <= len(window.audio) and _contains(window.audio, a) for a in test_audio)


def _contains(long: torch.Tensor, short: torch.Tensor) -> bool:
    starts = (long[: len(long) - len(short) + 1] == short[0]).nonzero().flatten()
    return any(torch.equal(long[s : s + len(short)], short) for s in starts[:1000].tolist())


def test_auto_robustness_adds_noise_to_recordings_at_10_db():
    from mmcompress.auto.robustness import corrupt, why_not_corrupted
    from mmcompress.data.real_speech import SpeechClips

    gen = torch.Generator().manual_seed(0)
    clips = SpeechClips([Utterance(str(i), torch.randn(16000, generator=gen) * 0.1, "a b") for i in range(3)])
    a, b = corrupt(clips, "audio_noise", seed=0), corrupt(clips, "audio_noise", seed=0)
    assert isinstance(a, SpeechClips) and [u.text for u in a] == ["a b"] * 3
    assert all(torch.equal(x.audio, y.audio) for x, y in zip(a, b, strict=True))  # deterministic
    noise = torch.cat([x.audio - u.audio for x, u in zip(a, clips, strict=True)])
    signal = torch.cat([u.audio for u in clips])
    assert 10 * torch.log10(signal.pow(2).mean() / noise.pow(2).mean()) == pytest.approx(10.0, abs=0.2)
    assert corrupt(clips, "image_noise") is None and why_not_corrupted(clips, "text_typos") == "recordings hold no text"
