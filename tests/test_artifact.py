"""The artifact's Deep Compression coding (relative indices, filler zeros, canonical Huffman), the
paper's size accounting, and its checksum: every damaged or cut-short file is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compresslab.compression import CompressionCallback, huffman, load_artifact, quantize_, save_artifact
from compresslab.compression.export import artifact_sizes
from compresslab.errors import CheckpointError
from compresslab.metrics import state_dict_bytes
from compresslab.models import build_model


def test_huffman_round_trip_and_code_lengths_are_optimal():
    rng = np.random.default_rng(0)
    symbols = rng.choice(6, size=5000, p=[0.5, 0.2, 0.15, 0.1, 0.04, 0.01])
    counts = np.bincount(symbols, minlength=8)  # symbols 6 and 7 unused
    lengths = huffman.huffman_lengths(counts)
    assert lengths[6] == lengths[7] == 0
    assert sum(2.0 ** -lengths[s] for s in range(6)) == pytest.approx(1.0)  # a complete prefix code
    p = counts[:6] / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    mean = huffman.coded_bits(counts, lengths) / symbols.size
    assert entropy <= mean < entropy + 1
    data = huffman.encode(symbols, lengths)
    assert len(data) == math.ceil(huffman.coded_bits(counts, lengths) / 8)
    assert np.array_equal(huffman.decode(data, lengths, symbols.size), symbols)


def test_huffman_of_a_single_symbol_and_of_nothing():
    lengths = huffman.huffman_lengths([0, 7])
    assert list(lengths) == [0, 1]
    assert np.array_equal(huffman.decode(huffman.encode(np.ones(7, dtype=int), lengths), lengths, 7), [1] * 7)
    assert huffman.encode(np.zeros(0, dtype=int), lengths) == b""


def test_relative_indices_insert_a_filler_zero_where_a_gap_overflows():
    nz = np.zeros(20, dtype=bool)
    nz[[1, 2, 12]] = True
    gaps, filler = huffman.relative_indices(nz, 2)  # at most 4 positions from one entry to the next
    # entries at 1, 2, then fillers at 6 and 10, then 12 (the paper's figure 2, with 2-bit indices)
    assert gaps.tolist() == [1, 0, 3, 3, 1]
    assert filler.tolist() == [False, False, True, True, False]
    assert huffman.positions_of(gaps, 20).tolist() == [1, 2, 6, 10, 12]
    gaps0, filler0 = huffman.relative_indices(nz, 0)  # 0 bits: every position up to the last nonzero
    assert gaps0.tolist() == [0] * 13 and int((~filler0).sum()) == 3


def test_paper_accounting_by_hand(tmp_path):
    model = nn.Linear(64, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, -1.0] * 32))
    quantize_(model, bits=1, method="kmeans")  # two shared values, every weight nonzero
    save_artifact(tmp_path / "m.clz", model, {"arch": "none"}, (64,), 1, "synthetic")
    sizes = artifact_sizes(tmp_path / "m.clz")
    # No zeros: 0-bit indices. Before Huffman: 64 codes of 1 bit + a codebook of 2 fp32 values.
    assert sizes["paper_bytes_before_huffman"] == (64 * 1 + 2 * 32) / 8
    # Huffman: 64 codes of 1 bit, a table of 3 code lengths (2 values + the filler symbol), codebook.
    assert sizes["paper_bytes"] == (64 + 3 * 8 + 2 * 32) / 8
    assert sizes["artifact_bytes"] == (tmp_path / "m.clz").stat().st_size


def deep_compressed(rate=0.92, bits=6, hidden=(300, 100), shape=(1, 28, 28)):
    model = build_model({"arch": "mlp", "hidden": list(hidden)}, shape, 10)
    CompressionCallback({"pipeline": ["prune", "quantize"], "rate": rate, "scope": "global", "bits": bits,
                         "quantizer": "kmeans"}).apply_all(model)
    return model


def test_huffman_coded_lenet300_is_smaller_than_its_fixed_width_count(tmp_path):
    model = deep_compressed()
    cfg = {"arch": "mlp", "hidden": [300, 100]}
    size = save_artifact(tmp_path / "m.clz", model, cfg, (1, 28, 28), 10, "mnist")
    sizes = artifact_sizes(tmp_path / "m.clz")
    assert sizes["paper_bytes"] < sizes["paper_bytes_before_huffman"]
    assert state_dict_bytes(model) / size >= 30
    loaded = load_artifact(tmp_path / "m.clz")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t)


@pytest.fixture
def small_artifact(tmp_path):
    model = deep_compressed(rate=0.8, bits=2, hidden=(8,), shape=(1, 4, 4))
    path = tmp_path / "m.clz"
    save_artifact(path, model, {"arch": "mlp", "hidden": [8]}, (1, 4, 4), 10, "synthetic")
    return path, model


def _loads_identically(path, model) -> bool:
    loaded = load_artifact(path).state_dict()
    return all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_every_flipped_byte_is_refused(small_artifact, tmp_path):
    path, model = small_artifact
    raw = path.read_bytes()
    bad = tmp_path / "bad.clz"
    refused = 0
    for i in range(len(raw)):
        bad.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
        try:
            assert _loads_identically(bad, model)
        except CheckpointError:
            refused += 1
    assert refused == len(raw)  # with a checksum over the whole file no flip goes unnoticed


def test_every_truncation_is_refused(small_artifact, tmp_path):
    path, model = small_artifact
    raw = path.read_bytes()
    bad = tmp_path / "cut.clz"
    for n in range(len(raw)):
        bad.write_bytes(raw[:n])
        with pytest.raises(CheckpointError):
            load_artifact(bad)
    bad.write_bytes(raw + b"\0")  # a byte too many is damage too
    with pytest.raises(CheckpointError, match="checksum"):
        load_artifact(bad)
