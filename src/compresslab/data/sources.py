"""Each dataset as four tensors: float inputs in [0, 1] (or the generator's own scale), long labels.

The datasets are small enough to hold in memory whole, which is what makes index batching possible.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compresslab.data.fetch import FASHION_MNIST, MNIST, IdxDataset, ensure_idx_files, read_idx
from compresslab.errors import ConfigError, DataError


@dataclass
class Arrays:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def load(name: str, data_dir: Path, **options) -> Arrays:
    loaders = {"mnist": lambda: _idx(MNIST, data_dir), "fashion_mnist": lambda: _idx(FASHION_MNIST, data_dir),
               "digits": digits, "mnist1d": lambda: mnist1d(data_dir),
               "cifar10": lambda: cifar10(data_dir, options.get("verify", True)),
               "synthetic": lambda: synthetic(**options.get("synthetic", {}))}
    if name not in loaders:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(loaders)}")
    return loaders[name]()


def _idx(ds: IdxDataset, data_dir: Path) -> Arrays:
    files = ensure_idx_files(ds, data_dir)

    def images(f):
        return torch.from_numpy(read_idx(files[f]).copy()).unsqueeze(1).float().div_(255)

    def labels(f):
        return torch.from_numpy(read_idx(files[f]).astype(np.int64))

    return Arrays(images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
                  images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"), 10)


def digits() -> Arrays:
    """scikit-learn's bundled 8x8 digits; it has no test split, so a fixed stratified 20% is held out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.2, random_state=0,
                                              stratify=bunch.target)
    return Arrays(torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
                  torch.from_numpy(x_te), torch.from_numpy(y_te).long(), 10)


def mnist1d(data_dir: Path) -> Arrays:
    """The MNIST-1D paper's dataset, generated with the package's default arguments (cached as .npz)."""
    cache = Path(data_dir) / "mnist1d" / "mnist1d_default.npz"
    if not cache.is_file():
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.tmp.npz")
        np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        tmp.replace(cache)
    d = np.load(cache)
    return Arrays(torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long(),
                  torch.from_numpy(d["x_test"]).float(), torch.from_numpy(d["y_test"]).long(), 10)


CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


def cifar10(data_dir: Path, verify: bool = True) -> Arrays:
    """The standard python-pickle batches in `<data_dir>/cifar-10-batches-py` (no package ships them)."""
    root = Path(data_dir) / "cifar-10-batches-py"
    batches = {}
    for fname, md5 in CIFAR10_MD5.items():
        path = root / fname
        if not path.is_file():
            raise DataError(f"CIFAR-10: {path} is missing; download cifar-10-python.tar.gz from "
                            f"https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into {data_dir}")
        if verify and (got := hashlib.md5(path.read_bytes()).hexdigest()) != md5:
            raise DataError(f"CIFAR-10: {path} is corrupt (md5 {got}, expected {md5}); "
                            "unpack cifar-10-python.tar.gz again")
        try:
            with open(path, "rb") as f:
                batches[fname] = pickle.load(f, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"CIFAR-10: {path} is not a CIFAR pickle batch ({e})") from e

    def stack(names):
        x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(batches[n][b"labels"]) for n in names])
        return torch.from_numpy(x).float().div_(255), torch.from_numpy(y).long()

    x_tr, y_tr = stack([f"data_batch_{i}" for i in range(1, 6)])
    x_te, y_te = stack(["test_batch"])
    return Arrays(x_tr, y_tr, x_te, y_te, 10)


def synthetic(n_train: int = 512, n_test: int = 256, shape=(1, 28, 28), num_classes: int = 10,
              noise: float = 1.0, seed: int = 0) -> Arrays:
    """Gaussian clusters around one random prototype per class: learnable, instant, any shape."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, *shape, generator=g)

    def sample(n):
        y = torch.arange(n) % num_classes
        return prototypes[y] + noise * torch.randn(n, *shape, generator=g), y

    x_tr, y_tr = sample(n_train)
    x_te, y_te = sample(n_test)
    return Arrays(x_tr, y_tr, x_te, y_te, num_classes)
