"""A user's own model (a `py:` factory in a file) and a local Hugging Face folder go through
`mmcompress run` (per-modality targets from an adapter YAML), `eval`/`measure`/`bench --run`
and `auto`, with the user's data from a `py:` factory: no built-in name anywhere."""

import json
import os
import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mmcompress.cli import cli
from mmcompress.errors import ConfigError, DataError, ModelError
from mmcompress.recipe.specs import load_data_spec, load_model_spec, resolve_task, resolve_workload

USER_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.embed = nn.Embedding(50, 16)
            self.text = nn.Linear(16, 16)
            self.head = nn.Linear(8 + 16, 5)

        def forward(self, image, input_ids):
            text = self.text(self.embed(input_ids).mean(1))
            return self.head(torch.cat([self.image(image), text], 1))


    def build():
        torch.manual_seed(0)
        return TwoTower()


    def data():
        g = torch.Generator().manual_seed(1)
        items = [{"image": torch.randn(1, 8, 8, generator=g), "input_ids": torch.randint(0, 50, (6,), generator=g)}
                 for _ in range(96)]
        return items[:64], items[64:]


    def mean_logit(model):
        batch = {"image": torch.ones(4, 1, 8, 8), "input_ids": torch.arange(24).reshape(4, 6)}
        return {"mean_logit": float(model(**batch).mean())}


    def logit_error(model):  # "error": lower is better
        batch = {"image": torch.ones(4, 1, 8, 8), "input_ids": torch.arange(24).reshape(4, 6)}
        return {"logit_error": float((model(**batch) - build()(**batch)).abs().mean())}


    def not_a_model():
        return 42
    """
)
ADAPTER = "towers:\n  image: [image]\n  text: [embed, text]\n  fusion: [head]\n"
RECIPE = textwrap.dedent(
    """
    stages:
      - name: baseline
        pass: evaluate
      - pass: quantize
        config: {calib_samples: 32}
        targets:
          modality:image: {weight_bits: 8}
          modality:text: {weight_bits: 4, granularity: per_group, group_size: 8}
          _default: null
      - name: quantized
        pass: evaluate
      - pass: export_onnx
    """
)


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def user(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative py: paths resolve from the working folder
    (tmp_path / "user_model.py").write_text(USER_CODE)
    (tmp_path / "towers.yaml").write_text(ADAPTER)
    (tmp_path / "mixed.yaml").write_text(RECIPE)
    return tmp_path


def test_user_model_goes_through_run_eval_measure_bench(user):
    out = user / "run"
    result = _run("run", "mixed.yaml", "--model", "py:user_model.py:build", "--data", "py:user_model.py:data",
                  "--task", "agreement", "--adapter", "towers.yaml", "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    assert record["model_spec"] == f"py:{user / 'user_model.py'}:build" and record["primary_metric"] == "agreement"
    assert record["recipe"]["dataset"] == f"py:{user / 'user_model.py'}:data"  # the folder works from anywhere
    quant = next(s for s in record["stages"] if s["pass_name"] == "quantize")
    assert quant["metrics"]["modules"] == 3  # conv (image), embedding + linear (text); the head stays float
    assert (quant["metrics"]["weight_bits_min"], quant["metrics"]["weight_bits_max"]) == (4, 8)  # on the console
    assert "mmcompress report: py:user_model.py:build" in (out / "report.md").read_text()
    assert "fashion-clip" not in (out / "report.md").read_text()

    measured = _run("measure", out, "--json")  # a run folder is a model spec of its own
    assert measured.exit_code == 0, measured.output
    towers = json.loads(measured.stdout)["per_modality"]
    assert set(towers) >= {"image", "text", "fusion"}
    assert json.loads(measured.stdout)["latency_ms"]  # timed on the data the run recorded
    evaluated = _run("eval", "py:user_model.py:build", "--run", out, "--data", "py:user_model.py:data",
                     "--task", "agreement", "--adapter", "towers.yaml")  # fmt: skip
    assert evaluated.exit_code == 0 and "agreement" in evaluated.output, evaluated.output
    recalled = _run("eval", out, "--json")  # the run folder alone: its recorded data, task and adapter
    assert recalled.exit_code == 0, recalled.output
    kl = float(re.search(r"kl\s*│\s*([0-9.e-]+)", evaluated.output).group(1))
    assert f"{json.loads(recalled.stdout)['metrics']['kl']:.4g}" == f"{kl:.4g}" and kl > 0  # vs float, not itself
    elsewhere = user / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # restored by the fixture's monkeypatch.chdir
    recalled = _run("eval", out)
    assert recalled.exit_code == 0 and "agreement" in recalled.output, recalled.output
    os.chdir(user)
    # the text tower is two modules (embed, text): each is timed on the inputs it gets in a full forward
    benched = _run("bench", "py:user_model.py:build", "--run", out, "--batch", 4, "--runtime", "eager",
                   "--runtime", "onnxruntime", "--part", "text", "--repeats", 2, "--warmup", 1,
                   "--out", user / "bench")  # fmt: skip
    assert benched.exit_code == 0, benched.output
    rows = json.loads((user / "bench" / "bench.json").read_text())["rows"]
    assert {(r["variant"], r["part"], r["runtime"]) for r in rows} == {
        (v, "text", rt) for v in ("original", "compressed") for rt in ("eager", "onnxruntime")
    }
    assert all(r["median_ms"] > 0 for r in rows)
    assert {p.name for p in (user / "bench").glob("*.onnx")} == {
        f"{v}-text-{i}.onnx" for v in ("original", "compressed") for i in (0, 1)
    }


def test_generic_recipe_runs_on_a_model_without_adapter(user):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "w8.yaml"
    out = user / "w8"
    result = _run("run", recipe, "--model", "py:user_model.py:build", "--data", "py:user_model.py:data",
                  "--task", "py:user_model.py:mean_logit", "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    assert record["primary_metric"] == "mean_logit"
    assert record["stages"][-1]["pass_name"] == "export_onnx"


def test_recipe_is_checked_against_the_model_before_any_stage(user):
    (user / "bad.yaml").write_text(RECIPE.replace("modality:text", "modality:audio"))
    out = user / "bad"
    result = _run("run", "bad.yaml", "--model", "py:user_model.py:build", "--data", "py:user_model.py:data",
                  "--adapter", "towers.yaml", "--out", out)  # fmt: skip
    assert result.exit_code == 2
    assert "target 'modality:audio' matches no module" in result.output and "towers are" in result.output
    assert not (out / "stages").exists()  # nothing ran
    no_adapter = _run("run", "mixed.yaml", "--model", "py:user_model.py:build", "--data", "py:user_model.py:data",
                      "--out", out)  # fmt: skip
    assert no_adapter.exit_code == 2 and "no adapter describes TwoTower" in no_adapter.output
    (user / "whole.yaml").write_text(RECIPE.replace("modality:image", "image"))
    whole = _run("run", "whole.yaml", "--model", "py:user_model.py:build", "--data", "py:user_model.py:data",
                 "--adapter", "towers.yaml", "--out", out)  # fmt: skip
    assert whole.exit_code == 2 and "target 'image' is a Sequential, which quantize cannot handle" in whole.output
    nm = _run("prune", "py:user_model.py:build", "--data", "py:user_model.py:data", "--task", "agreement",
              "--pattern", "2:4", "--out", out)  # fmt: skip
    assert nm.exit_code == 2 and "image.0" in nm.output and "multiple of 4" in nm.output


def test_a_group_size_that_does_not_fit_is_warned_once(user):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run("quantize", "py:user_model.py:build", "--data", "py:user_model.py:data", "--task",
                      "agreement", "--bits", 4, "--granularity", "per_group", "--group-size", 5, "--no-onnx",
                      "--out", user / "g5")  # fmt: skip
    assert result.exit_code == 0, result.output
    misfits = [str(w.message) for w in caught if "does not divide" in str(w.message)]
    assert len(misfits) == 1, misfits  # the stage's own warning, no second copy from the recipe check
    assert "image.0 (9 inputs)" in misfits[0] and "per output channel" in misfits[0]


def test_spec_errors_name_the_problem(user):
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model_spec("nope")
    with pytest.raises(ConfigError, match="has no 'missing'"):
        load_model_spec("py:user_model.py:missing")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_spec("py:other.py:build")
    with pytest.raises(ModelError, match="must return an nn.Module"):
        load_model_spec("py:user_model.py:not_a_model")
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_data_spec("imagenet")
    with pytest.raises(ConfigError, match="unknown task 'bleu'"):
        resolve_task("bleu", torch.nn.Linear(2, 2), None)
    result = _run("run", "mixed.yaml", "--out", user / "x")
    assert result.exit_code == 2 and "names no model" in result.output
    # data made for another model: one line naming both, before any stage (real Whisper on spoken-digits
    # crashed with a traceback from inside transformers)
    items = [torch.randn(5) for _ in range(4)]
    with pytest.raises(DataError, match=r"Linear does not run on a batch of the data \(one tensor \(2, 5\)\)"):
        resolve_workload(torch.nn.Linear(3, 2), (items, items), "agreement")
    # --epochs trains a built-in's baseline: on a user's model it is refused, not silently ignored
    trained = _run("quantize", "py:user_model.py:build", "--data", "py:user_model.py:data", "--task", "agreement",
                   "--epochs", 3, "--out", user / "e")  # fmt: skip
    assert trained.exit_code == 2 and "is used as built" in trained.output and not (user / "e").exists()


def test_agreement_task_needs_no_labels_and_its_loss_distils(user):
    model = load_model_spec("py:user_model.py:build")
    train, test, _ = load_data_spec("py:user_model.py:data")
    task = resolve_task("agreement", model, test)
    assert task.evaluate(model, test)["agreement"] == 1.0
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))
    assert task.evaluate(model, test)["agreement"] < 1.0
    inputs, _ = task.batch(train, torch.arange(8))
    assert task.loss(model, inputs, None) > 0


def test_unlabelled_data_without_a_task_is_measured_by_agreement_and_says_so(user):
    """Items without labels (dicts of inputs here) cannot be classified; without --task the CLI warns and
    compares with the model as loaded instead of failing inside a batch unpack."""
    with pytest.warns(UserWarning, match="without labels"):
        result = _run("eval", "py:user_model.py:build", "--data", "py:user_model.py:data")
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output
    model = load_model_spec("py:user_model.py:build")
    _, test, _ = load_data_spec("py:user_model.py:data")
    with pytest.warns(UserWarning, match="without labels"):
        task = resolve_task(None, model, test)
    assert task.primary_metric == "agreement" and task.evaluate(model, test)["agreement"] == 1.0
    pairs = [(torch.randn(4), torch.ones(4, dtype=torch.bool)) for _ in range(3)]  # two inputs, no label
    with pytest.warns(UserWarning, match="without labels"):
        assert resolve_task(None, torch.nn.Linear(4, 2), pairs).primary_metric == "agreement"


def test_local_hf_folder_goes_through_quantize_and_measure(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny-bert")
    (tmp_path / "texts.py").write_text(
        "import torch\n\ndef data():\n    g = torch.Generator().manual_seed(0)\n"
        "    items = [{'input_ids': torch.randint(0, 64, (12,), generator=g),"
        " 'attention_mask': torch.ones(12, dtype=torch.long)} for _ in range(48)]\n"
        "    return items[:32], items[32:]\n"
    )
    out = tmp_path / "q"
    spec = f"hf:{tmp_path / 'tiny-bert'}"
    result = _run("quantize", spec, "--data", f"py:{tmp_path / 'texts.py'}:data", "--task", "agreement",
                  "--bits", 8, "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    assert record["model_spec"] == spec
    assert record["stages"][2]["metrics"]["agreement"] > 0.9
    measured = _run("measure", spec, "--run", out, "--json")
    assert measured.exit_code == 0, measured.output
    assert json.loads(measured.stdout)["compression"] > 3
    benched = _run("bench", spec, "--run", out, "--batch", 2, "--runtime", "eager", "--part", "model",
                   "--repeats", 2, "--warmup", 1, "--out", tmp_path / "bench")  # fmt: skip
    assert benched.exit_code == 0, benched.output
    from mmcompress.auto.api import auto_compress

    result = auto_compress(spec, tmp_path / "auto", data=f"py:{tmp_path / 'texts.py'}:data", task="agreement",
                           max_drop=50.0, max_trials=1, test_limit=None, verify_top=0, check_robustness=False,
                           progress=False)  # fmt: skip
    assert len(result.trials) == 1 and result.trials[0].ok, result.trials[0].error


def test_auto_searches_a_user_model(user):
    from mmcompress.auto.api import auto_compress

    result = auto_compress("py:user_model.py:build", user / "auto", data="py:user_model.py:data", task="agreement",
                           adapter="towers.yaml", max_drop=50.0, max_trials=2, test_limit=None, verify_top=0,
                           check_robustness=False, progress=False)  # fmt: skip
    assert len(result.trials) == 2 and all(t.ok for t in result.trials), [t.error for t in result.trials]
    assert set(result.space.towers) == {"image", "text", "fusion"}
    if result.chosen is not None:
        recipe = (user / "auto" / "chosen.yaml").read_text()
        assert f"model: py:{user / 'user_model.py'}:build" in recipe and "task: agreement" in recipe
        assert f"adapter: {user / 'towers.yaml'}" in recipe  # absolute: chosen.yaml runs from any folder
        assert yaml.safe_load(recipe)["stages"][0]["name"] == "baseline"  # the report shows before -> after


def test_a_resumed_run_keeps_the_user_metrics_name_and_direction(user):
    """A run whose evaluations all resumed recorded the user function's metric as 'metric' (it names
    itself only when it runs) and higher-is-better: the report then crashed with KeyError 'metric'."""
    args = (
        "run",
        "mixed.yaml",
        "--model",
        "py:user_model.py:build",
        "--data",
        "py:user_model.py:data",
        "--task",
        "py:user_model.py:logit_error",
        "--adapter",
        "towers.yaml",
        "--out",
        user / "run",
        "--quiet",
    )
    with pytest.warns(UserWarning, match="evaluation function that reads data of its own"):  # --test-limit
        resolve_workload(
            "py:user_model.py:build", "py:user_model.py:data", "py:user_model.py:logit_error", test_limit=4
        )
    for _ in range(2):  # the second run resumes every stage
        result = _run(*args)
        assert result.exit_code == 0, result.output
        record = json.loads((user / "run" / "record.json").read_text())
        assert (record["primary_metric"], record["higher_is_better"]) == ("logit_error", False)
    assert "resumed" in result.output and "logit_error" in (user / "run" / "report.md").read_text()
    from mmcompress.core.io import json_digest

    record["primary_metric"] = "metric"  # what such runs recorded before: `report` crashed on it
    record["record_sha256"] = json_digest(record, "record_sha256")
    (user / "run" / "record.json").write_text(json.dumps(record))
    redrawn = _run("report", user / "run")
    assert redrawn.exit_code == 0 and "logit_error" in (user / "run" / "report.md").read_text(), redrawn.output


def test_head_pruning_a_model_without_known_attention_fails_before_any_stage(user):
    stages = "stages:\n  - pass: evaluate\n  - pass: prune_structured\n    config: {unit: heads}\n"
    (user / "heads.yaml").write_text(stages)
    out = user / "heads"
    result = _run("run", "heads.yaml", "--model", "py:user_model.py:build", "--data", "py:user_model.py:data",
                  "--task", "agreement", "--out", out)  # fmt: skip
    assert result.exit_code == 2 and "unit 'heads' found no attention module in TwoTower" in result.output
    assert not (out / "stages").exists()  # the baseline did not run first


def test_py_specs_import_their_neighbours_and_modules_of_the_working_folder(user):
    (user / "blocks_of_user.py").write_text("import torch\n\ndef block():\n    return torch.nn.Linear(4, 2)\n")
    (user / "sub").mkdir()
    (user / "sub" / "factory.py").write_text("from helper_of_factory import make\n\ndef build():\n    return make()\n")
    (user / "sub" / "helper_of_factory.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Linear(3, 3)\n"
    )
    assert isinstance(load_model_spec("py:sub/factory.py:build"), torch.nn.Linear)  # sibling import
    assert load_model_spec("py:blocks_of_user:block").out_features == 2  # a module in the working folder
