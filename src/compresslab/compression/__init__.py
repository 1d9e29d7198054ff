"""Compression: pure tensor math (`functional`), in-place verbs on models (`clip_`, `prune_`,
`quantize_`), the Lightning callback that compresses while training and keeps it compressed
(`CompressionCallback`), and the small on-disk artifact (`save_artifact`, `load_artifact`)."""

from compresslab.compression.callback import CompressionCallback
from compresslab.compression.config import CompressionConfig, parse
from compresslab.compression.export import load_artifact, save_artifact
from compresslab.compression.transforms import (QuantSpec, apply_masks_, clip_, nonzero_masks, prune_,
                                                quantization_of, quantize_, targets)
from compresslab.compression.verify import TargetMissed, achieved_sparsity, verify


__all__ = ["CompressionCallback", "CompressionConfig", "parse", "load_artifact", "save_artifact",
           "QuantSpec", "apply_masks_", "clip_", "nonzero_masks", "prune_", "quantization_of",
           "quantize_", "targets", "TargetMissed", "achieved_sparsity", "verify"]
