"""Config nodes handed to code that takes plain data (model and optimizer builders, specs, files)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf


def to_plain(node):
    """A config node as plain dicts and lists, interpolations resolved; anything else as it is, so a
    value read from a record or a checkpoint (already plain) passes through."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a.b': value} for every leaf of a nested plain config; lists and dicts left as leaves (an
    empty dict) are JSON text, so that every value is hashable and compares by content."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value
    return flat
