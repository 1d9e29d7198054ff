"""The project's one content hash: sha256, cut to a hex prefix, of a text or of a value's JSON text.

Record config hashes, cache keys and sweep and job dir names are stored on disk and matched against
new ones, so the text each is hashed from must never change (tests/test_hashing.py pins one value
of each). This module imports nothing heavy: the sweep layer uses it without torch.
"""

from __future__ import annotations

import hashlib
import json


def text_digest(text: str, length: int) -> str:
    """The first `length` hex digits of sha256 over `text` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def json_digest(value, length: int, *, compact: bool = False) -> str:
    """`text_digest` of `value` as JSON with sorted keys and non-JSON values (paths) as str.
    `compact` drops the spaces after separators, as record config hashes have always been
    computed; cache keys and sweep dir names keep json's default separators."""
    return text_digest(json.dumps(value, sort_keys=True, default=str,
                                  separators=(",", ":") if compact else None), length)
