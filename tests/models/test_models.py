import pytest
import torch

from mmcompress.errors import ModelError
from mmcompress.models import cache
from mmcompress.models.adapter import Adapter, adapter_for
from mmcompress.models.zoo import MODELS, build_model, chance_level_warning, list_models, load_model
from mmcompress.train.config import TrainConfig

CAPTION_MODELS = ["fusion-early", "fusion-late", "fusion-xattn", "baseline-image", "baseline-text"]


@pytest.mark.parametrize("name", CAPTION_MODELS)
def test_caption_models_forward_and_every_parameter_has_a_modality(name):
    model = build_model(name)
    logits = model(**model.example_inputs(3))
    assert logits.shape == (3, 10)
    adapter = adapter_for(model)
    untagged = [n for n, _ in model.named_parameters() if adapter.modality_of(n) is None]
    assert untagged == [], untagged


@pytest.fixture(scope="module")
def clip():
    return build_model("fashion-clip")


def test_fashion_clip_towers_and_unit_norm_embeddings(clip):
    img, txt = clip(**clip.example_inputs(2))
    assert img.shape == txt.shape == (2, 128)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    adapter = adapter_for(clip)
    assert {adapter.modality_of(n) for n, _ in clip.named_parameters()} == {"image", "text", "fusion"}


def test_fashion_clip_text_tower_is_the_real_minilm(clip):
    from sentence_transformers import SentenceTransformer

    from mmcompress.models.minilm import minilm_path

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    texts = ["a photo of a coat", "a pair of jeans on a plain background"]
    expected = st.encode(texts, convert_to_tensor=True, normalize_embeddings=False)
    with torch.no_grad():
        got = clip.text_tower(**clip.tokenize(texts))
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999


def test_adapter_longest_prefix_and_bad_modality():
    adapter = Adapter(towers={"text": ("enc",), "fusion": ("enc.head",)})
    assert adapter.modality_of("enc.head.weight") == "fusion" and adapter.modality_of("enc.0.weight") == "text"
    assert adapter.modality_of("encoder.x") is None
    with pytest.raises(ValueError, match="unknown modality"):
        Adapter(towers={"smell": ("x",)})


def test_cache_hit_skips_training_and_corruption_is_an_error(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=4, batch_size=64, lr=5e-3)
    first = load_model("digits-cnn", cache_dir=tmp_path, train=cfg, progress=False)
    assert first.mmcompress_info["metrics"]["accuracy"] > 0.7

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the checkpoint was cached")

    monkeypatch.setattr("mmcompress.train.loop.fit", no_training)
    second = load_model("digits-cnn", cache_dir=tmp_path, train=cfg, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (weights,) = (tmp_path / "models").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="corrupted"):
        load_model("digits-cnn", cache_dir=tmp_path, train=cfg, progress=False)


def test_a_baseline_trained_to_chance_level_warns_on_every_load(tmp_path):
    untrained = TrainConfig(epochs=1, batch_size=64, lr=1e-9)  # learns nothing: about 0.1 on 10 digits
    with pytest.warns(UserWarning, match="about chance for 10 classes"):
        load_model("digits-cnn", cache_dir=tmp_path, train=untrained, train_limit=128, progress=False)
    with pytest.warns(UserWarning, match="--epochs"):  # and again from the cache
        load_model("digits-cnn", cache_dir=tmp_path, train=untrained, train_limit=128, progress=False)
    assert chance_level_warning("digits-cnn", {"accuracy": 0.16, "loss": 0.01}, 10) is None
    assert chance_level_warning("fashion-clip", {"zero_shot_accuracy": 0.12}, 10) is not None
    assert chance_level_warning("minilm", {"accuracy": 0.1}, None) is None


def test_checkpoint_from_another_config_is_rejected(tmp_path):
    model = build_model("digits-cnn")
    cache.save_cached(tmp_path, "digits-cnn", "aaa", model, {"metrics": {}})
    (tmp_path / "models" / "digits-cnn-aaa.json").write_text('{"key": "bbb"}')
    with pytest.raises(ModelError, match="another config"):
        cache.load_cached(tmp_path, "digits-cnn", "aaa", build_model("digits-cnn"))
    other = build_model("digits-cnn", widths=(4, 4, 4))
    cache.save_cached(tmp_path, "digits-cnn", "ccc", other, {"metrics": {}})
    with pytest.raises(ModelError, match="does not fit"):
        cache.load_cached(tmp_path, "digits-cnn", "ccc", build_model("digits-cnn"))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="valid names: baseline-image"):
        build_model("resnet")
    assert set(list_models()) == set(MODELS)


def test_a_run_folder_given_as_a_model_name_points_to_load_run(tmp_path):
    (tmp_path / "record.json").write_text("{}")
    with pytest.raises(ModelError, match="run folder.*load_run"):
        load_model(str(tmp_path))


@pytest.mark.slow
def test_fusion_beats_both_single_modality_baselines_on_ambiguous_captions(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=128, lr=2e-3)
    scores = {
        name: load_model(name, cache_dir=tmp_path, train=cfg, train_limit=8000, progress=False).mmcompress_info[
            "metrics"
        ]["accuracy_ambiguous"]
        for name in ("fusion-late", "baseline-image", "baseline-text")
    }
    assert scores["fusion-late"] > scores["baseline-image"] > scores["baseline-text"], scores
