"""Config nodes handed to code that takes plain data (model and optimizer builders, specs, files)."""

from __future__ import annotations

from omegaconf import OmegaConf


def to_plain(node):
    """A config node as plain dicts and lists, interpolations resolved; anything else as it is, so a
    value read from a record or a checkpoint (already plain) passes through."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
