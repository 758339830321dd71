import gzip
import shutil

import pytest
import torch

from mmcompress.data.fashion_mnist import DEBIAN_DIR, FILES, find_fashion_mnist, load_fashion_mnist
from mmcompress.data.registry import list_datasets, load_dataset
from mmcompress.errors import DataError


def test_real_test_split_has_10000_images_and_balanced_labels():
    ds = load_fashion_mnist("test")
    assert ds.images.shape == (10000, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10


def _copy_files(dst):
    for name in [f for pair in FILES.values() for f in pair[:2]]:
        shutil.copy(DEBIAN_DIR / name, dst / name)


def test_user_data_dir_is_searched_first(tmp_path):
    _copy_files(tmp_path)
    assert find_fashion_mnist(tmp_path) == tmp_path


def test_truncated_file_is_an_error_not_fewer_samples(tmp_path):
    _copy_files(tmp_path)
    name = FILES["test"][0]
    raw = gzip.decompress((tmp_path / name).read_bytes())
    (tmp_path / name).write_bytes(gzip.compress(raw[:-784]))  # one image short
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("test", tmp_path)


def test_bad_magic_is_an_error(tmp_path):
    _copy_files(tmp_path)
    name = FILES["test"][1]
    raw = bytearray(gzip.decompress((tmp_path / name).read_bytes()))
    raw[2] = 0x0D  # float dtype code instead of uint8
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="magic"):
        load_fashion_mnist("test", tmp_path)


def test_missing_data_dir_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setattr("mmcompress.data.fashion_mnist.DEBIAN_DIR", tmp_path / "none")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path / "missing")


def test_failed_download_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setattr("mmcompress.data.fashion_mnist.DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr("mmcompress.data.fashion_mnist.OFFICIAL_URL", "http://127.0.0.1:9/")
    with pytest.raises(DataError, match="download failed.*--data-dir"):
        load_fashion_mnist("test", download_dir=tmp_path / "dl")
    assert not any((tmp_path / "dl").glob("*.gz"))  # nothing half-written


def test_unknown_dataset_lists_valid_names():
    names = "digits, fashion-captions, fashion-mnist, photo-crops, real-speech, spoken-digits"
    with pytest.raises(DataError, match=f"valid names: {names}"):
        load_dataset("cifar")
    assert set(list_datasets()) == {"digits", "fashion-captions", "fashion-mnist", "photo-crops", "real-speech",
                                    "spoken-digits"}  # fmt: skip


def test_digits_split_is_disjoint_and_complete():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and tr.images.shape[1:] == (28, 28)
