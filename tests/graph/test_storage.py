import pytest
import torch

from mmcompress.errors import ModelError
from mmcompress.graph.sparse import decode_bitmap, encode_bitmap
from mmcompress.graph.storage import load_compact, save_compact, stored_bytes
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.quant.api import QuantConfig, quantize


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32])
def test_bitmap_round_trip_is_exact(dtype):
    t = (torch.randn(37, 11) * 10).to(dtype)
    t[t.abs() < 5] = 0
    bitmap, values = encode_bitmap(t)
    assert torch.equal(decode_bitmap(bitmap, values, tuple(t.shape)), t)


def test_pruned_int8_model_round_trips_exactly_and_is_small(two_tower, tmp_path):
    prune(two_tower, PruneConfig(sparsity=0.5))
    quantize(two_tower, QuantConfig())
    path = save_compact(two_tower, tmp_path / "m.safetensors", extra={"note": "x"})
    state, extra = load_compact(path)
    assert extra == {"note": "x"}
    for name, t in two_tower.state_dict().items():
        assert torch.equal(state[name], t)
    head = stored_bytes(two_tower)["head.qweight"]
    numel = two_tower.head.qweight.numel()
    assert head < numel  # bitmap + half the int8 values < dense int8
    assert abs(path.stat().st_size - sum(stored_bytes(two_tower).values())) < 8192  # header only


def test_truncated_or_foreign_file_is_an_error(two_tower, tmp_path):
    path = save_compact(two_tower, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelError, match="corrupted or truncated"):
        load_compact(path)
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelError, match="not an mmcompress"):
        load_compact(tmp_path / "plain.safetensors")
