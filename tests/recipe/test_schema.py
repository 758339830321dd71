from pathlib import Path

import pytest

from mmcompress.errors import ConfigError
from mmcompress.recipe.passes import PASSES, Pass
from mmcompress.recipe.schema import Recipe, load_recipe
from mmcompress.recipe.stages import build_pass


def test_default_recipe_is_valid_and_round_trips():
    recipe = load_recipe(None)
    passes = ["evaluate", "prune", "finetune", "quantize", "quantize", "evaluate", "export_onnx"]
    assert [s.pass_ for s in recipe.stages] == passes
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"stages": [{"pass": "prune", "config": {"sparsity": 2}}]}, r"stages\[0\]\.config\.sparsity"),
        (
            {"stages": [{"pass": "squash"}]},
            "unknown pass 'squash'; valid names: analyze_quant, distill, drop_layers, evaluate",
        ),
        ({"stages": [{"pass": "prune", "colour": 1}]}, "unknown field"),
        ({"stages": []}, "stages"),
        ({"stages": [{"pass": "evaluate", "targets": {"_default": {}}}]}, "does not take targets"),
        (
            {"stages": [{"pass": "quantize", "targets": {"modality:text": {"weight_bits": 0}}}]},
            r"targets\[modality:text\]",
        ),
        ({"train": {"epochs": 0}, "stages": [{"pass": "evaluate"}]}, r"recipe\.train\.epochs"),
    ],
)
def test_invalid_recipes_name_the_problem(recipe, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_every_registered_pass_fits_the_interface():
    assert build_pass  # importing mmcompress.recipe.stages registered the built-in passes
    for name, cls in PASSES.items():
        assert issubclass(cls, Pass), name
        assert not getattr(cls.run, "__isabstractmethod__", False), name
        cls.Config()  # defaults are valid
        assert cls.__doc__, name


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml")))
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.stages
    if recipe.model:  # a recipe for one model says so in its first line
        assert f"{recipe.model} only" in path.read_text().splitlines()[0]
    else:  # a generic recipe targets no tower or module name: it works on any model
        assert all(not s.targets for s in recipe.stages), path.name
