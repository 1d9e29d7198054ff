"""Data: the real MNIST files against their checksums, corrupt files refused, splits and batching."""

from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch

from compresslab.data import TensorBatches, TensorDataModule, random_shift, split_train_val
from compresslab.data.fetch import FASHION_MNIST, MNIST, ensure_idx_files, file_md5, read_idx
from compresslab.data.sources import CIFAR10_MD5, cifar10
from compresslab.errors import ConfigError, DataError
from conftest import DATA_DIR


def test_mnist_files_match_checksums_and_known_labels():
    files = ensure_idx_files(MNIST, DATA_DIR)
    for name, path in files.items():
        assert file_md5(path) == MNIST.md5[name]
    train_labels = read_idx(files["train-labels-idx1-ubyte"])
    test_labels = read_idx(files["t10k-labels-idx1-ubyte"])
    assert read_idx(files["train-images-idx3-ubyte"]).shape == (60000, 28, 28)
    assert (train_labels[0], test_labels[0]) == (5, 7)
    assert np.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_fashion_mnist_files_match_checksums_and_known_labels():
    try:
        files = ensure_idx_files(FASHION_MNIST, DATA_DIR)
    except DataError as e:
        pytest.skip(f"Fashion-MNIST not available on this machine: {e}")
    assert read_idx(files["train-labels-idx1-ubyte"])[0] == 9
    assert read_idx(files["t10k-labels-idx1-ubyte"])[0] == 9


def _copy_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, path in ensure_idx_files(MNIST, DATA_DIR).items():
        shutil.copy(path, raw / path.name)
    return raw


def test_truncated_file_is_refused_naming_file_and_checksum(tmp_path):
    raw = _copy_mnist(tmp_path)
    victim = raw / "t10k-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        ensure_idx_files(MNIST, tmp_path)
    message = str(err.value)
    assert str(victim) in message and MNIST.md5["t10k-labels-idx1-ubyte"] in message
    assert "delete it" in message


def test_gzipped_files_in_torchvision_layout_are_accepted(tmp_path):
    raw = _copy_mnist(tmp_path)
    plain = raw / "t10k-labels-idx1-ubyte"
    with open(plain, "rb") as src, gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain.unlink()
    files = ensure_idx_files(MNIST, tmp_path)
    assert files["t10k-labels-idx1-ubyte"].suffix == ".gz"


def test_missing_file_without_a_route_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSLAB_NO_DOWNLOAD", "1")
    monkeypatch.setattr("compresslab.data.fetch.DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        ensure_idx_files(FASHION_MNIST, tmp_path)


def _write_cifar_batches(root, n=20):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_MD5:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_pickle_batches_load_and_are_verified(tmp_path):
    _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    arrays = cifar10(tmp_path, verify=False)
    assert arrays.x_train.shape == (100, 3, 32, 32) and arrays.x_test.shape == (20, 3, 32, 32)
    assert 0 <= arrays.x_train.min() and arrays.x_train.max() <= 1
    with pytest.raises(DataError, match="corrupt"):
        cifar10(tmp_path, verify=True)  # synthetic files cannot match the real checksums


def test_validation_split_is_seeded_stratified_and_disjoint():
    y = torch.arange(1000) % 10
    train, val = split_train_val(y, 0.1, seed=0)
    again, _ = split_train_val(y, 0.1, seed=0)
    assert torch.equal(train, again)
    assert len(set(train.tolist()) & set(val.tolist())) == 0 and len(train) + len(val) == 1000
    assert torch.bincount(y[val]).tolist() == [10] * 10


def test_cv_fold_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="data.cv.fold=5"):
        split_train_val(torch.arange(100) % 10, 0.1, seed=0, folds=5, fold=5)


def test_batches_cover_every_sample_once_per_epoch():
    x = torch.arange(10).float().unsqueeze(1)
    batches = TensorBatches(x, torch.arange(10), batch_size=3, shuffle=True, seed=1)
    assert len(batches) == 4
    seen = torch.cat([xb for xb, _ in batches]).squeeze(1)
    assert sorted(seen.tolist()) == list(range(10))
    first, second = [torch.cat([yb for _, yb in batches]) for _ in range(2)]
    assert not torch.equal(first, second)  # a new order each epoch


def test_random_shift_moves_content_by_at_most_max_px():
    x = torch.zeros(50, 1, 9, 9)
    x[:, :, 4, 4] = 1
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    rows, cols = [t for t in torch.nonzero(shifted[:, 0])[:, 1:].T]
    assert shifted.sum() == 50  # nothing pushed off a 9x9 image by 2 px
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5


def test_datamodule_standardises_with_training_statistics():
    dm = TensorDataModule("synthetic", data_dir=".", synthetic={"n_train": 200, "n_test": 50,
                                                               "shape": [3, 4, 4], "num_classes": 4})
    dm.setup()
    assert dm.input_shape == (3, 4, 4) and dm.num_classes == 4
    assert torch.allclose(dm.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert len(dm.y_train) + len(dm.y_val) == 200 and len(dm.y_test) == 50
