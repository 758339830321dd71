import json

import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.models.zoo import ImageClassifier
from mmcompress.recipe.runner import compress, load_run, read_record
from mmcompress.train.tasks import ClassificationTask

RECIPE = {
    "seed": 3,
    "stages": [
        {"name": "baseline", "pass": "evaluate", "config": {"latency_repeats": 2}},
        {"pass": "prune", "config": {"sparsity": 0.5, "scope": "layer"}},
        {"pass": "finetune", "config": {"epochs": 3, "lr": 2e-3, "batch_size": 64}},
        {"pass": "quantize"},
        {"name": "compressed", "pass": "evaluate", "config": {"latency_repeats": 2}},
        {"pass": "export_onnx"},
    ],
}
MAX_ACCURACY_DROP = 0.03


@pytest.fixture
def trained(train_digits_cnn):
    return train_digits_cnn(epochs=6)


def test_compress_runs_every_stage_and_writes_artifacts(trained, digits, tmp_path):
    res = compress(trained, RECIPE, data=digits, output_dir=tmp_path, progress=False)
    base, comp = res.metrics("baseline"), res.metrics("compressed")
    assert comp["compression"] > 4 and base["accuracy"] - comp["accuracy"] < MAX_ACCURACY_DROP
    exported = res.metrics("export_onnx")
    assert exported["output_cosine"] > 0.999 and abs(exported["ort_accuracy"] - exported["torch_accuracy"]) < 0.01
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["seed"] == 3 and "torch" in record["versions"] and len(record["stages"]) == 6
    assert record["stages"][3]["record"]["technique"] == "quantize"
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "model.onnx").exists()


def test_interrupted_run_resumes_after_last_finished_stage(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    first = compress(trained, RECIPE, data=digits, output_dir=tmp_path, progress=False)
    # simulate a crash after stage 3: forget the later stages
    for d in sorted((tmp_path / "stages").iterdir())[4:]:
        (d / "stage.json").unlink()
    (tmp_path / "record.json").unlink()  # as a crashed run leaves it
    with pytest.raises(ConfigError, match=r"unfinished run \(finished stages: 00-baseline, .*rerun the command"):
        read_record(tmp_path)  # `mmcompress report/eval RUN` say so, not "not a run folder"
    again = compress(start, RECIPE, data=digits, output_dir=tmp_path, progress=False)
    assert [s.resumed for s in again.stages] == [True] * 4 + [False] * 2
    assert again.metrics("compressed")["accuracy"] == pytest.approx(first.metrics("compressed")["accuracy"])


def test_changed_recipe_or_model_invalidates_later_stages(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    compress(copy.deepcopy(start), RECIPE, data=digits, output_dir=tmp_path, progress=False)
    changed = json.loads(json.dumps(RECIPE))
    changed["stages"][1]["config"]["sparsity"] = 0.4
    with pytest.raises(ConfigError, match="holds the run of another recipe"):  # never mixed in silently
        compress(copy.deepcopy(start), changed, data=digits, output_dir=tmp_path, progress=False)
    res = compress(copy.deepcopy(start), changed, data=digits, output_dir=tmp_path, progress=False, force=True)
    assert [s.resumed for s in res.stages] == [True] + [False] * 5  # --force keeps the stage both share
    other = ImageClassifier((8, 16, 32))
    res = compress(other, changed, data=digits, output_dir=tmp_path, progress=False)
    assert not any(s.resumed for s in res.stages)


def test_load_run_rebuilds_the_compressed_model(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    res = compress(trained, RECIPE, data=digits, output_dir=tmp_path, progress=False)
    rebuilt = load_run(tmp_path, start)
    acc = ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"]
    assert acc == pytest.approx(res.metrics("compressed")["accuracy"])


def test_qat_pass_in_a_recipe_converts_and_resumes(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    recipe = {
        "stages": [
            {"pass": "qat", "config": {"bits": 4, "epochs": 4, "batch_size": 64, "lr": 2e-3}},
            {"name": "qat4", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    assert res.metrics("qat4")["accuracy"] > 0.85 and res.metrics("qat4")["compression"] > 4
    assert {"float_loss", "quant_loss"} <= set(res.metrics("qat"))
    rebuilt = load_run(tmp_path, start)
    assert ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"] == pytest.approx(
        res.metrics("qat4")["accuracy"]
    )


def test_structured_then_gradual_pruning_in_a_recipe_resume_and_rebuild(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    gradual = {"sparsity": 0.5, "train": {"epochs": 4, "batch_size": 32, "lr": 3e-3}}
    recipe = {
        "stages": [
            {
                "pass": "prune_structured",
                "config": {"ratio": 0.25, "method": "taylor"},
                "targets": {"re:features.*": {}},
            },
            {"pass": "gradual_prune", "config": gradual},
            {"name": "pruned", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    assert [m.out_channels for m in trained.features.modules() if isinstance(m, torch.nn.Conv2d)] == [6, 12, 24]
    assert res.metrics("gradual_prune")["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert res.metrics("pruned")["accuracy"] > 0.8
    again = compress(copy.deepcopy(start), recipe, data=digits, output_dir=tmp_path, progress=False)
    assert all(s.resumed for s in again.stages)
    rebuilt = load_run(tmp_path, start)
    acc = ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"]
    assert acc == pytest.approx(res.metrics("pruned")["accuracy"])


def test_distill_stage_teaches_the_pruned_model_with_the_starting_model(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    train = {"epochs": 6, "batch_size": 64, "lr": 5e-3}
    distill = {"temperature": 4.0, "alpha": 0.9, "cache_teacher": True, "train": train}
    recipe = {
        "stages": [
            {"pass": "prune_structured", "config": {"ratio": 0.5}, "targets": {"re:features.*": {}}},
            {"name": "pruned", "pass": "evaluate", "config": {"latency_repeats": 2}},
            {"pass": "distill", "config": distill},
            {"name": "distilled", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    assert res.metrics("distilled")["accuracy"] > res.metrics("pruned")["accuracy"] + 0.05
    assert res.metrics("distilled")["accuracy"] > 0.75
    again = compress(copy.deepcopy(start), recipe, data=digits, output_dir=tmp_path, progress=False)
    assert all(s.resumed for s in again.stages)
    rebuilt = load_run(tmp_path, copy.deepcopy(start))
    assert ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"] == pytest.approx(
        res.metrics("distilled")["accuracy"]
    )


def test_graph_passes_fold_factorize_share_resume_and_rebuild(trained, digits, tmp_path):
    import copy

    from mmcompress.graph.storage import stored_bytes

    start = copy.deepcopy(trained)
    recipe = {
        "stages": [
            {"name": "baseline", "pass": "evaluate", "config": {"latency_repeats": 2}},
            {"pass": "fold_batchnorm"},
            {"name": "folded", "pass": "evaluate", "config": {"latency_repeats": 2}},
            {"pass": "factorize", "config": {"rank": 6}, "targets": {"head": {}}},
            {"pass": "share_weights", "config": {"bits": 5, "train": {"epochs": 2, "batch_size": 64}}},
            {"name": "compressed", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    assert res.metrics("folded")["accuracy"] == pytest.approx(res.metrics("baseline")["accuracy"], abs=0.003)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.modules())
    assert isinstance(trained.head, torch.nn.Sequential) and trained.head[0].out_features == 6
    assert all(m.weight.unique().numel() <= 33 for m in trained.modules() if isinstance(m, torch.nn.Conv2d))
    assert res.metrics("compressed")["accuracy"] > res.metrics("baseline")["accuracy"] - 0.05
    assert sum(stored_bytes(trained).values()) < sum(stored_bytes(start).values())
    again = compress(copy.deepcopy(start), recipe, data=digits, output_dir=tmp_path, progress=False)
    assert all(s.resumed for s in again.stages)
    rebuilt = load_run(tmp_path, copy.deepcopy(start))
    acc = ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"]
    assert acc == pytest.approx(res.metrics("compressed")["accuracy"])


def test_a_stage_that_loses_more_than_warn_drop_points_is_warned_and_recorded(trained, digits, tmp_path):
    recipe = {
        "warn_drop": 2.0,
        "stages": [
            {"name": "baseline", "pass": "evaluate", "config": {"latency_repeats": 1}},
            {"pass": "prune_structured", "config": {"ratio": 0.9}},  # no fine-tuning: a large loss
            {"name": "pruned", "pass": "evaluate", "config": {"latency_repeats": 1}},
        ],
    }
    with pytest.warns(UserWarning, match=r"stage 2 'pruned' loses .* points of accuracy .* warn_drop 2.0"):
        res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    assert res.metrics("pruned")["drop_points"] > 2.0
    assert "drop_points" not in res.metrics("baseline")  # the reference itself
    assert res.metrics("pruned")["compression_vs_baseline"] > 2  # its own `compression` stays ~1: float32


def test_tune_quantized_stage_is_taught_by_the_starting_model_and_rebuilds(trained, digits, tmp_path):
    import copy

    start = copy.deepcopy(trained)
    static = {"weight_bits": 8, "activations": "static", "calib_samples": 64, "calib_batch_size": 32}
    recipe = {
        "stages": [
            {"pass": "fold_batchnorm"},
            {"pass": "quantize", "config": static},
            {"name": "quantized", "pass": "evaluate", "config": {"latency_repeats": 2}},
            {"pass": "tune_quantized", "config": {"steps": 40, "samples": 256, "batch_size": 32}},
            {"name": "tuned", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    tuned = res.stages[3].metrics
    assert tuned["layers"] == 4 and tuned["loss_last"] < tuned["loss_first"]
    assert res.metrics("tuned")["accuracy"] >= res.metrics("quantized")["accuracy"] - 0.01
    rebuilt = load_run(tmp_path, copy.deepcopy(start))
    assert ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"] == pytest.approx(
        res.metrics("tuned")["accuracy"]
    )


def test_a_finetune_that_only_hurts_gives_back_its_starting_weights(trained, digits, tmp_path):
    """A fine-tune at a learning rate far too high (as 5e-4 was for MiniLM after Wanda: cosine 0.924 ->
    0.899) must not end worse than it started on the training samples it checks: the starting weights
    are kept, with a warning; `keep_best: false` trains as asked."""
    start = {k: v.clone() for k, v in trained.state_dict().items()}
    stages = [{"pass": "finetune", "config": {"epochs": 1, "lr": 5.0, "batch_size": 64, "check_samples": 128}},
              {"name": "tuned", "pass": "evaluate", "config": {"latency_repeats": 1}}]  # fmt: skip
    with pytest.warns(UserWarning, match=r"finetune: the fine-tuned weights did not score better .* 128 training"):
        res = compress(trained, {"stages": stages}, data=digits, output_dir=tmp_path / "a", progress=False)
    assert res.metrics("finetune")["kept_epoch"] == 0
    assert any("did not score better" in w for w in res.stages[0].warnings)  # kept for the report
    from mmcompress.report.render import write_report

    markdown, _ = write_report(tmp_path / "a")
    assert "stage 'finetune' warned: finetune: the fine-tuned weights did not score better" in markdown.read_text()
    assert all(torch.equal(v, start[k]) for k, v in trained.state_dict().items())  # compress edits in place
    stages[0]["config"]["keep_best"] = False
    res = compress(trained, {"stages": stages}, data=digits, output_dir=tmp_path / "b", progress=False)
    assert "kept_epoch" not in res.metrics("finetune")
    assert res.metrics("tuned")["accuracy"] < 0.5  # what lr 5 does


def test_a_task_suggests_the_finetune_settings_a_recipe_leaves_unset(trained, digits, tmp_path):
    """A speech recognizer's task asks for small batches at a low learning rate; a task's
    `pass_defaults` apply where the recipe says nothing, and what the recipe sets wins."""

    class TooHot(ClassificationTask):
        pass_defaults = {"finetune": {"lr": 5.0}}

    start = {k: v.clone() for k, v in trained.state_dict().items()}
    stages = [{"pass": "finetune", "config": {"epochs": 1, "batch_size": 64, "keep_best": False}},
              {"name": "tuned", "pass": "evaluate", "config": {"latency_repeats": 1}}]  # fmt: skip
    res = compress(trained, {"stages": stages}, data=digits, task=TooHot(), output_dir=tmp_path / "a", progress=False)
    assert res.metrics("tuned")["accuracy"] < 0.5 and res.stages[0].config["lr"] == 5.0  # the task's, recorded
    trained.load_state_dict(start)
    stages[0]["config"]["lr"] = 1e-5
    res = compress(trained, {"stages": stages}, data=digits, task=TooHot(), output_dir=tmp_path / "b", progress=False)
    assert res.metrics("tuned")["accuracy"] > 0.9  # the recipe's lr


def test_a_task_gives_each_pass_the_training_data_it_needs(trained, digits, tmp_path):
    """A task may hand a pass another form of the training data (a speech task packs recordings
    into full windows for training): the fine-tune here trains on the task's form, one class only,
    and forgets the others; the evaluation still reads the test set."""
    train, _ = digits
    only_zeros = [i for i in range(len(train)) if int(train[i][1]) == 0]
    seen: list[tuple[str, int]] = []

    class OneClassTraining(ClassificationTask):
        def pass_data(self, pass_name, dataset):
            seen.append((pass_name, len(dataset)))
            return torch.utils.data.Subset(dataset, only_zeros) if pass_name == "finetune" else dataset

    stages = [{"pass": "finetune", "config": {"epochs": 3, "batch_size": 16, "lr": 0.05, "keep_best": False}},
              {"name": "tuned", "pass": "evaluate", "config": {"latency_repeats": 1}}]  # fmt: skip
    task = OneClassTraining()
    res = compress(trained, {"stages": stages}, data=digits, task=task, output_dir=tmp_path, progress=False)
    assert seen == [("finetune", len(train)), ("evaluate", len(train))]
    assert res.metrics("tuned")["accuracy"] < 0.2  # every digit read as a 0
