"""Automatic compression: Pareto math, plans -> recipes, constraints, the cached/resumable search,
failed trials, robustness corruptions and the report."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import yaml

from mmcompress.auto.pareto import dominates, pareto_front
from mmcompress.auto.plan import Plan, TowerPlan, plan_to_recipe
from mmcompress.auto.robustness import CORRUPTIONS, corrupt
from mmcompress.auto.search import Constraints, choose, search_plans
from mmcompress.auto.trials import TrialRecord
from mmcompress.data.registry import load_dataset
from mmcompress.quant.config import QuantConfig
from mmcompress.recipe.schema import load_recipe


def test_pareto_front_on_known_points():
    points = [(10, 5, 0.90), (5, 5, 0.88), (6, 5, 0.87), (20, 1, 0.91), (5, 5, 0.88), (30, 9, 0.80)]
    senses = (False, False, True)  # size, latency down; accuracy up
    assert pareto_front(points, senses) == [0, 1, 3, 4]  # (6, 5, .87) and (30, 9, .80) are dominated
    assert dominates((1, 1, 1.0), (1, 2, 1.0), senses) and not dominates((1, 1, 1.0), (1, 1, 1.0), senses)
    with pytest.raises(ValueError, match="differ in length"):
        dominates((1, 2), (1, 2, 3), senses)


def test_plan_round_trips_through_a_recipe_yaml(tmp_path):
    plan = Plan(
        towers={"image": TowerPlan(bits=8, channels=0.5), "text": TowerPlan(bits=4, sparsity=0.5, group_size=128),
                "fusion": TowerPlan(bits=0)},
        finetune_epochs=1, finetune_freeze=("text_tower",),
    )  # fmt: skip
    recipe = plan_to_recipe(plan, "fashion-clip")
    path = tmp_path / "chosen.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    again = load_recipe(path)
    assert again.to_dict() == recipe.to_dict()
    passes = [s.pass_ for s in again.stages]
    assert passes == ["prune_structured", "prune", "finetune", "quantize", "evaluate", "export_onnx"]
    quant = again.stages[3].targets
    assert quant["modality:fusion"] is None and quant["modality:text"]["weight_bits"] == 4
    assert Plan.from_dict(plan.to_dict()) == plan and Plan.from_dict(plan.to_dict()).key() == plan.key()
    with pytest.raises(ValueError, match="needs bits 8 or 4"):
        TowerPlan(bits=3, activations="dynamic")
    w4a8 = Plan(towers={"text": TowerPlan(bits=4, activations="dynamic", group_size=128)})
    assert w4a8.towers["text"].describe() == "W4A8 g128"
    target = plan_to_recipe(w4a8, "fashion-clip").stages[0].targets["modality:text"]
    assert target["activations"] == "dynamic" and target["group_size"] == 128 and target["weight_bits"] == 4
    QuantConfig.from_dict(target)  # a valid quantization config


def _record(mb, ms, metric, ok=True):
    plan = Plan(towers={"image": TowerPlan(bits=8 if mb > 1 else 4)})
    metrics = {"size_mb": mb, "latency_ms": ms, "metric": metric}
    return TrialRecord(plan, {}, "ok" if ok else "failed", metrics if ok else {})


def test_constraints_pick_the_smallest_feasible_plan_or_name_the_closest_miss():
    baseline = {"metric": 0.90, "size_mb": 10.0, "latency_ms": 10.0}
    trials = [_record(2.0, 5, 0.895), _record(0.5, 4, 0.85), _record(1.0, 6, 0.891), _record(0.1, 1, 0, ok=False)]
    index, message = choose(trials, baseline, Constraints(max_drop=1.0))
    assert index == 2 and message.startswith("chosen")
    index, message = choose(trials, baseline, Constraints(max_drop=1.0, max_size_mb=0.8))
    assert index is None and "max_size_mb by 0.2" in message  # closest: the 1.0 MB plan misses by 0.2 MB
    index, message = choose(trials, baseline, Constraints(max_drop=1.0, max_latency_ms=5.5))
    assert index == 0


@pytest.mark.slow
def test_search_caches_resumes_and_survives_failing_evaluations(tmp_path):
    calls = []

    def flaky_metric(model):  # float models score 0.5; any quantized model "fails" with NaN
        calls.append(1)
        return math.nan if any(hasattr(m, "qweight") for m in model.modules()) else 0.5

    first = search_plans("digits-cnn", tmp_path, max_trials=5, test_limit=120, metric_fn=flaky_metric,
                         progress=False)  # fmt: skip
    assert len(first.trials) == 5
    opener = first.trials[0].plan.towers["image"]  # the safe plan first, not 5 random draws
    assert (opener.bits, opener.sparsity, opener.channels, first.trials[0].plan.finetune_epochs) == (8, 0, 0, 0)
    failed = [t for t in first.trials if not t.ok]
    assert failed and all("finite" in t.error and t.plan.towers["image"].bits for t in failed)
    assert all(t.ok for t in first.trials if t.plan.towers["image"].bits == 0)
    assert len(list((tmp_path / "trials").glob("*.json"))) == 5
    evaluated = len(calls)
    second = search_plans("digits-cnn", tmp_path, max_trials=7, test_limit=120, metric_fn=flaky_metric,
                          progress=False)  # fmt: skip
    assert len(second.trials) == 7
    assert len(calls) - evaluated == 2 + 1  # two new trials (+1 for the baseline's metric)
    assert {t.plan.key() for t in first.trials} <= {t.plan.key() for t in second.trials}
    assert second.space.sensitivity["image"][8] < second.space.sensitivity["image"][3]
    with pytest.warns(UserWarning, match=r"another setup \(changed: metric_fn\)"):  # trials of the flaky metric
        parallel = search_plans("digits-cnn", tmp_path, max_trials=2, test_limit=120, jobs=2, progress=False)
    assert len(parallel.trials) == 2 and sum(t.ok for t in parallel.trials) >= 1  # two worker processes
    assert len(list(tmp_path.glob("previous-*/trials/*.json"))) == 7  # set aside, not deleted


def test_a_search_on_other_test_data_does_not_reuse_cached_trials(tmp_path):
    calls = []

    def metric(model):
        calls.append(1)
        return 0.5

    def search(limit):
        return search_plans("digits-cnn", tmp_path, max_trials=2, test_limit=limit, metric_fn=metric, progress=False)

    first = search(120)
    assert len(calls) == 3  # the baseline and two trials
    again = search(120)
    assert len(calls) == 4 and [t.plan.key() for t in again.trials] == [t.plan.key() for t in first.trials]
    with pytest.warns(UserWarning, match=r"changed: test\)"):
        search(60)
    assert len(calls) == 7  # measured again on the 60 samples, not taken from the 120-sample cache
    assert len(list(tmp_path.glob("previous-*/trials/*.json"))) == 2


def test_corruptions_are_deterministic_under_a_seed():
    captions = load_dataset("fashion-captions", "test", limit=64)
    for kind in ("image_noise", "image_blur", "text_typos", "text_dropout"):
        a, b, c = corrupt(captions, kind, 0), corrupt(captions, kind, 0), corrupt(captions, kind, 1)
        if kind.startswith("image"):
            assert torch.equal(a.images, b.images) and not torch.equal(a.images, captions.images)
            assert kind == "image_blur" or not torch.equal(a.images, c.images)
        else:
            assert a.captions == b.captions and a.captions != captions.captions
            assert a.captions != c.captions
    assert corrupt(captions, "audio_noise") is None  # no audio in this dataset
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(captions, "fog")
    assert set(CORRUPTIONS) >= {"image_noise", "text_typos", "audio_noise"}


@pytest.mark.slow
def test_auto_compress_writes_recipe_report_and_summary(tmp_path):
    from mmcompress.auto.api import auto_compress, load_summary

    result = auto_compress("digits-cnn", tmp_path, max_drop=3.0, max_trials=4, test_limit=120, progress=False)
    assert result.chosen is not None and result.recipe_path.is_file()
    checks = result.extra["verified"]["checks"]  # re-run on the full test set before choosing
    assert checks and checks[-1]["trial"] == result.chosen and not checks[-1]["misses"]
    assert load_recipe(result.recipe_path).model == "digits-cnn"
    summary = load_summary(tmp_path)
    assert len(summary["trials"]) == 4 and summary["chosen"] == result.chosen
    assert set(summary["robustness"]) >= {"clean", "image_noise", "image_blur"}
    assert set(summary["robustness"]["image_blur"]["chosen"]) == {"accuracy"}
    md = (tmp_path / "auto_report.md").read_text()
    assert "Chosen plan" in md and "## All trials" in md and (tmp_path / "pareto.png").stat().st_size > 1000
    assert "<img" in (tmp_path / "auto_report.html").read_text()
    unsat = auto_compress("digits-cnn", tmp_path, max_drop=3.0, max_size_mb=1e-6, max_trials=4, test_limit=120,
                          check_robustness=False, progress=False)  # fmt: skip
    assert unsat.chosen is None and "max_size_mb" in unsat.message


def test_ray_backend_runs_trials_as_ray_tasks(tmp_path):
    pytest.importorskip("ray", reason="Ray is optional (pip install 'mmcompress[ray]')")
    import ray

    try:
        result = search_plans("digits-cnn", tmp_path, max_trials=2, test_limit=120, jobs=2, backend="ray",
                              progress=False)  # fmt: skip
    finally:
        ray.shutdown()
    assert len(result.trials) == 2 and all(t.ok for t in result.trials)


def test_unknown_backend_is_an_error():
    from mmcompress.auto.workers import Workers
    from mmcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown backend 'dask'"):
        Workers("dask")


def test_tuned_plans_add_a_tune_stage_and_untuned_plans_keep_their_keys():
    import optuna

    from mmcompress.auto.space import SearchSpace, TowerSpace

    towers = {"image": TowerPlan(bits=8)}
    assert Plan(towers=towers).key() == Plan(towers=towers, tune_steps=0).key()
    tuned = Plan(towers=towers, tune_steps=120)
    assert tuned.key() != Plan(towers=towers).key() and "distillation-tuned 120 steps" in tuned.describe()
    passes = [s.pass_ for s in plan_to_recipe(tuned, "digits-cnn").stages]
    assert passes == ["quantize", "tune_quantized", "evaluate", "export_onnx"]
    assert plan_to_recipe(tuned, "digits-cnn").stages[1].config["steps"] == 120
    space = SearchSpace(towers={"image": TowerSpace(bits=(0, 8))}, tune_steps=(0, 120))
    fixed = {"image.sparsity": 0.0, "image.channels": 0.0, "tune_steps": 120}
    assert space.suggest(optuna.trial.FixedTrial({**fixed, "image.bits": 8})).tune_steps == 120
    assert space.suggest(optuna.trial.FixedTrial({**fixed, "image.bits": 0})).tune_steps == 0  # nothing to tune


class _UserImages(torch.utils.data.Dataset):  # a user's own dataset: `.images` but not a dataclass
    def __init__(self):
        self.images, self.labels = torch.rand(8, 1, 8, 8), torch.arange(8) % 2

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@dataclasses.dataclass
class _FloatImages(torch.utils.data.Dataset):  # a dataclass of normalised float images
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_robustness_notes_what_it_cannot_corrupt_and_never_crashes_on_user_data():
    from mmcompress.auto.robustness import robustness, why_not_corrupted
    from mmcompress.train.tasks import ClassificationTask

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    user = _UserImages()
    assert corrupt(user, "image_noise") is None and "not a dataclass" in why_not_corrupted(user, "image_noise")
    notes: list[str] = []
    table = robustness({"float32": model}, lambda ds: ClassificationTask(), user, notes=notes)
    assert list(table) == ["clean"] and any("image_noise, image_blur" in n and "not a dataclass" in n for n in notes)

    normalised = _FloatImages(torch.randn(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 2)
    noisy = corrupt(normalised, "image_noise")
    assert noisy.images.dtype == torch.float32 and noisy.images.min() >= normalised.images.min()
    assert not torch.equal(noisy.images, normalised.images)
    subset = corrupt(torch.utils.data.Subset(normalised, range(4)), "image_blur")
    assert isinstance(subset, torch.utils.data.Subset) and len(subset) == 4

    class Picky(torch.nn.Module):  # fails on the blurred copy only
        def forward(self, x):
            if not torch.equal(x, normalised.images[: len(x)]) and x.std() < normalised.images.std() * 0.9:
                raise RuntimeError("expected the original pixels")
            return model(x)

    notes = []
    table = robustness({"float32": Picky()}, lambda ds: ClassificationTask(), normalised, notes=notes)
    assert "clean" in table and "image_noise" in table and "image_blur" not in table
    assert any(n.startswith("image_blur: the evaluation failed") for n in notes)


def test_a_lower_is_better_metric_counts_a_rise_as_a_loss_in_the_sensitivity_and_the_report():
    """Whisper's WER through auto: 3-bit towers that raised WER by 55-122 points read as gains
    ("loses -121.74 points"), so the search kept 3 bits for them, and the report called a WER that
    fell from 0.120 to 0.098 a drop of +2.17 points."""
    from mmcompress.auto.report import drop_points
    from mmcompress.auto.space import tower_drops
    from mmcompress.core.batches import call_model
    from mmcompress.models.adapter import adapter_for
    from mmcompress.models.zoo import build_model
    from mmcompress.train.tasks import Task

    class OutputError(Task):  # lower is better, as WER is
        primary_metric, higher_is_better = "error", False

        def __init__(self, reference):
            self.reference = reference

        def batch(self, dataset, index):
            raise NotImplementedError

        def loss(self, model, inputs, targets):
            raise NotImplementedError

        def evaluate(self, model, dataset, batch_size=0):
            with torch.no_grad():
                return {"error": float((call_model(model, dataset) - call_model(self.reference, dataset)).abs().mean())}

    torch.manual_seed(0)
    model = build_model("fusion-late").eval()
    inputs = adapter_for(model).example_inputs(8)
    drops = tower_drops(model, {"image": 0, "text": 0}, OutputError(model), inputs)
    text = drops["text"]
    assert text[3] > text[4] > text[8] > 0  # fewer bits: more error, a larger (positive) loss
    assert drop_points({"metric": 0.12, "higher_is_better": -1.0}, 0.10) == pytest.approx(-2.0)
    assert drop_points({"metric": 0.90}, 0.88) == pytest.approx(2.0)
    baseline = {"metric": 0.12, "higher_is_better": -1.0, "size_mb": 10.0, "latency_ms": 10.0}
    worse, better = _record(2.0, 5, 0.20), _record(5.0, 5, 0.11)
    assert choose([worse, better], baseline, Constraints(max_drop=1.0))[0] == 1
