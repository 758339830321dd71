"""Deep Compression: k-means weight sharing, Huffman coding, relative indices, the file format."""

import numpy as np
import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError, DataError
from mmcompress.graph import huffman
from mmcompress.graph.deep_compression import (
    decode_tensor,
    encode_tensor,
    fixed_length_bits,
    huffman_bits,
    positions_from_gaps,
    relative_indices,
)
from mmcompress.graph.deep_file import load_deep, save_deep
from mmcompress.graph.sharing import fuse_shared_weights, kmeans_1d, share_weights
from mmcompress.prune.api import prune


def test_huffman_round_trip_and_optimal_length():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])  # dyadic: Huffman reaches the entropy exactly
    symbols = rng.choice(5, 5000, p=probs)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=5))
    assert lengths.tolist() == [1, 2, 3, 4, 4]
    data, bits = huffman.encode(symbols, lengths)
    assert bits == int(lengths[symbols].sum())
    assert np.array_equal(huffman.decode(data, bits, len(symbols), lengths), symbols)
    with pytest.raises(ValueError, match="truncated"):
        huffman.decode(data[:-2], bits, len(symbols), lengths)
    assert huffman.code_lengths(np.array([0, 7])).tolist() == [0, 1]  # one symbol still gets a code


def test_relative_indices_insert_fillers_and_invert():
    positions = np.array([0, 2, 40, 41, 200])
    gaps, fillers = relative_indices(positions, 3)
    assert gaps.max() <= 7 and fillers.sum() > 0
    assert np.array_equal(positions_from_gaps(gaps)[~fillers], positions)


def test_kmeans_linear_init_finds_the_clusters_and_keeps_extremes():
    values = torch.cat([torch.full((50,), -1.0), torch.full((5,), 0.02), torch.full((50,), 3.0)])
    centroids, codes = kmeans_1d(values, 3)
    assert sorted(centroids.tolist()) == pytest.approx([-1.0, 0.02, 3.0])
    assert torch.equal(centroids[codes], values)
    with pytest.raises(ConfigError, match="at least one cluster"):
        kmeans_1d(values, 0)


def test_shared_weights_train_centroids_keep_zeros_and_fuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    prune(model, {"sparsity": 0.75, "scope": "layer"})
    rec = share_weights(model, {"bits": 3})
    assert all(m["clusters_used"] <= 8 for m in rec.modules.values())
    zeros = model[0].weight == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    assert torch.equal(model[0].weight == 0, zeros)  # pruned weights stay pruned
    assert model[0].weight[~zeros].unique().numel() <= 8  # still 2^bits shared values
    fuse_shared_weights(model)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.unique().numel() <= 9


def test_encoding_is_exact_and_huffman_beats_fixed_length():
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    weight[torch.rand_like(weight) < 0.9] = 0
    centroids, codes = kmeans_1d(weight[weight != 0], 32)
    weight[weight != 0] = centroids[codes]
    enc = encode_tensor(weight, 5)
    assert enc.kind == "shared" and torch.equal(decode_tensor(enc), weight)
    fixed, coded = fixed_length_bits(enc), huffman_bits(enc)
    assert coded.value_bits < fixed.value_bits  # Gaussian weights: central clusters are frequent
    raw = torch.randn(8, 40)  # 320 distinct values: not shared, stored raw
    enc = encode_tensor(raw, 4)
    assert enc.kind == "sparse" and torch.equal(decode_tensor(enc), raw)


def test_deep_file_round_trip_and_corruption(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    prune(model, {"sparsity": 0.9})
    share_weights(model, {"bits": 4, "conv_bits": 8})
    fuse_shared_weights(model)
    path = tmp_path / "m.mmdc"
    parts = save_deep(model, path)
    assert parts["total"] == path.stat().st_size
    state = load_deep(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    (tmp_path / "bad.mmdc").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="checksum"):
        load_deep(tmp_path / "bad.mmdc")
    (tmp_path / "short.mmdc").write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="truncated"):
        load_deep(tmp_path / "short.mmdc")
    (tmp_path / "other.bin").write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(DataError, match="not a Deep Compression file"):
        load_deep(tmp_path / "other.bin")
