import os

import pytest
import torch

from mmcompress.core.io import atomic_write_bytes, ensure_writable_dir, safe_torch_load, stable_hash
from mmcompress.core.record import Record
from mmcompress.errors import ConfigError, MMCompressError
from mmcompress.prune.api import PruneConfig
from mmcompress.quant.api import QuantConfig


@pytest.mark.parametrize("config", [QuantConfig(weight_bits=4), PruneConfig(sparsity=0.3, scope="layer")])
def test_config_round_trips_yaml_and_json(config):
    assert type(config).from_yaml(config.to_yaml()) == config
    assert type(config).from_dict(config.to_dict()) == config


def test_bad_value_names_field_and_allowed_values():
    with pytest.raises(ConfigError, match=r"scope.*'global', 'layer' or 'row'"):
        PruneConfig.from_dict({"scope": "everywhere"})
    with pytest.raises(ConfigError, match="unknown field 'QuantConfig.bitz'"):
        QuantConfig.from_dict({"bitz": 3})


def test_record_round_trip():
    rec = Record("prune", {"_default": {"sparsity": 0.5}}, {"a": {"sparsity": 0.5}}, {"sparsity": 0.5}, seed=3)
    assert Record.from_json(rec.to_json()) == rec


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"w": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(MMCompressError, match="corrupted"):
        safe_torch_load(path)


def test_unwritable_dir_is_an_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
            blocker = tmp_path / "file"
            blocker.write_text("x")
            ro = blocker / "sub"
        with pytest.raises(MMCompressError, match="not writable"):
            ensure_writable_dir(ro)
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_stable_hash_is_order_independent():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1}) != stable_hash({"a": 2, "b": 1})
