"""Writing files so that a crash, a kill or a full disk never leaves half a file under the final
name: every writer of the project (records, checkpoints, Lightning's .ckpt files, the cache) goes
through `atomic_write`.

The bytes go to a temporary file beside the target (same file system, so the rename is atomic),
are flushed to the disk, and only then renamed over the target. On any failure the temporary file
is removed; a full disk or an unwritable directory becomes one StorageError line naming the path
and the fix.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

from compresslab.errors import StorageError

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def atomic_write(path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blob = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise storage_error(e, path) from e
        raise
    return path


def torch_bytes(obj) -> bytes:
    """`torch.save(obj)` as bytes, for atomic_write."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def is_storage_error(e: BaseException) -> bool:
    """An OSError that says the disk is full (as opposed to a missing or unreadable file)."""
    return isinstance(e, OSError) and e.errno in _FULL


def storage_error(e: OSError, path=None) -> StorageError:
    """The one-line StorageError for an OSError met while writing `path` (or e.filename)."""
    where = path if path is not None else (e.filename or "a file of the job")
    if e.errno in _FULL:
        return StorageError(f"no space left on the device to write {where}; free space there, or set "
                            "paths.output_dir (or COMPRESSLAB_ROOT) to a disk with room")
    return StorageError(f"cannot write {where} ({e.strerror or e}); make it writable, or set "
                        "paths.output_dir (or COMPRESSLAB_ROOT) to a writable directory")


def set_aside(path, reason: str) -> Path:
    """Rename an unreadable file out of the way (kept for inspection, never read again) and say so."""
    import logging
    import time

    path = Path(path)
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    logging.getLogger(__name__).warning("set aside the unreadable %s as %s (%s)", path, aside.name, reason)
    return aside
