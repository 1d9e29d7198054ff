"""Fetch and verify the file-based datasets ahead of time: `python -m compresslab.data.prepare`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from compresslab.data.fetch import FASHION_MNIST, MNIST, ensure_idx_files
from compresslab.errors import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("COMPRESSLAB_DATA_DIR", "data"))
    parser.add_argument("names", nargs="*", default=["mnist", "fashion_mnist"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sets = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}
    status = 0
    for name in args.names:
        try:
            files = ensure_idx_files(sets[name], Path(args.data_dir))
            print(f"{name}: verified {len(files)} files in {Path(next(iter(files.values()))).parent}")
        except DataError as e:
            print(f"{name}: {e}", file=sys.stderr)
            status = 1 if name == "mnist" else status  # Fashion-MNIST is optional on a bare machine
    return status


if __name__ == "__main__":
    sys.exit(main())
