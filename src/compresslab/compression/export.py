"""The compressed artifact: a file that is really as small as the compression claims.

`save_artifact(path, model, model_cfg, input_shape, num_classes, data, sizes=None)` writes the model so that
- a quantized tensor is stored as Deep Compression stores it (Han, Mao, Dally 2016, section 3):
  its nonzero entries as relative indices of a fixed bit width with filler zeros where a run of
  zeros is too long, and their integer codes (uniform) or codebook indices (k-means weight
  sharing), both streams canonical-Huffman-coded (huffman.py); the index width (0-8 bits, 0 =
  every position an entry) is the one that codes the tensor smallest;
- any other sparse tensor stores only the positions of its nonzeros (a bitmask or byte gaps between
  them, whichever is smaller) and their values; every part is lzma-coded when that makes it smaller;
- `sizes` ({layer: [inputs, outputs]}, from shrink.shrink) records layers made smaller than the
  model config builds them, so a structurally shrunk model loads under its original config.
`load_artifact(path)` rebuilds the nn.Module, bit-for-bit equal to the model that was saved.
`artifact_sizes(path)` gives the bytes on disk beside the paper's own count of the same weights:
`paper_bytes` (Huffman-coded indices + codes, codebooks and code tables, other tensors as fp32) and
`paper_bytes_before_huffman` (fixed-width indices and codes at the width that is smallest).

Layout: MAGIC, the SHA-256 of everything after it, a 4-byte header length, the lzma-coded JSON
header, the raw parts. Any damaged or cut-short file fails the checksum and raises CheckpointError.
Reading it runs no pickle, so it can never run code.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compresslab.compression import huffman
from compresslab.compression.shrink import resize_
from compresslab.compression.transforms import QuantSpec, quantization_of
from compresslab.errors import CheckpointError

MAGIC = b"COMPRESSLAB-ARTIFACT\n"
FORMAT = "compresslab.artifact/2"
_DIGEST = 32
# Raw lzma streams: the .xz container's ~60 bytes of framing per part would cost more than they check.
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_MAX_INDEX_BITS = 8


def save_artifact(path: Path, model: nn.Module, model_cfg: dict, input_shape, num_classes: int,
                  data: str, sizes: dict | None = None) -> int:
    """Write `model` compactly to `path` (atomically); returns the file's size in bytes.
    Pass the same model config, input shape, class count and dataset name as to checkpoint.save_model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    specs = quantization_of(model)
    blob = bytearray()
    entries = []
    paper = {"bits": 0, "bits_before_huffman": 0}

    def part(data: bytes | tuple) -> dict:
        codec, stored = data if isinstance(data, tuple) else _shrink(data)
        entry = {"offset": len(blob), "length": len(stored), "codec": codec}
        blob.extend(stored)
        return entry

    for name, t in model.state_dict().items():
        entries.append(_encode(name, t.detach().cpu(), specs.get(name), part, paper))
    header = {"format": FORMAT, "model": dict(model_cfg), "input_shape": list(input_shape),
              "num_classes": int(num_classes), "data": data, "sizes": dict(sizes or {}), "tensors": entries,
              "paper_bytes": math.ceil(paper["bits"] / 8),
              "paper_bytes_before_huffman": math.ceil(paper["bits_before_huffman"] / 8)}
    head = lzma.compress(json.dumps(header, separators=(",", ":"), default=_plain).encode(),
                         format=lzma.FORMAT_RAW, filters=_FILTERS)
    payload = struct.pack("<I", len(head)) + head + bytes(blob)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    os.replace(tmp, path)
    return path.stat().st_size


def _read(path) -> tuple[dict, memoryview]:
    """(header, body) of a checked artifact file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"artifact {path} does not exist; give the model.clz a compressed job wrote")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a compresslab artifact (no {MAGIC!r} header)")
    digest, payload = raw[len(MAGIC):len(MAGIC) + _DIGEST], memoryview(raw)[len(MAGIC) + _DIGEST:]
    if len(digest) < _DIGEST or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"artifact {path} is damaged or cut short (its checksum does not match); "
                              "export it again")
    try:
        (n,) = struct.unpack_from("<I", payload, 0)
        header = json.loads(lzma.decompress(payload[4:4 + n], format=lzma.FORMAT_RAW, filters=_FILTERS))
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, this version reads {FORMAT!r}")
    except (struct.error, ValueError, lzma.LZMAError) as e:
        raise CheckpointError(f"artifact {path} cannot be read ({e}); export it again") from e
    return header, payload[4 + n:]


def artifact_sizes(path) -> dict:
    """{artifact_bytes, paper_bytes, paper_bytes_before_huffman} of a saved artifact."""
    header, _ = _read(path)
    return {"artifact_bytes": Path(path).stat().st_size, "paper_bytes": header["paper_bytes"],
            "paper_bytes_before_huffman": header["paper_bytes_before_huffman"]}


def load_artifact(path) -> nn.Module:
    """The nn.Module stored by `save_artifact`, with its quantization recorded on it."""
    from compresslab.models import build_model

    header, body = _read(path)
    try:
        def part(entry) -> bytes:
            b = bytes(body[entry["offset"]:entry["offset"] + entry["length"]])
            return lzma.decompress(b, format=lzma.FORMAT_RAW, filters=_FILTERS) \
                if entry["codec"] == "lzma" else b

        state, specs = {}, {}
        for e in header["tensors"]:
            state[e["name"]] = _decode(e, part)
            if e.get("quant"):
                q = e["quant"]
                scale = torch.tensor(q["scale"], dtype=torch.float32).view(q["scale_shape"]) \
                    if q.get("scale") is not None else None
                specs[e["name"]] = QuantSpec(q["method"], q["bits"], q["per_channel"], scale)
        model = resize_(build_model(header["model"], header["input_shape"], header["num_classes"]),
                        header["sizes"])
        model.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, lzma.LZMAError) as e:
        raise CheckpointError(f"artifact {path} is corrupt ({e}); export it again") from e
    quantization_of(model).update(specs)
    return model.eval()


# -- tensor coding ------------------------------------------------------------------------------

def _encode(name: str, t: torch.Tensor, spec: QuantSpec | None, part, paper: dict) -> dict:
    """The header entry of one tensor (its bytes go through `part`); adds its bits to `paper`."""
    entry = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if not t.is_floating_point() or t.numel() < 64:
        raw = t.numpy().tobytes()
        entry["dense"] = part(raw)
        _count(paper, 8 * len(raw), 8 * len(raw))
        return entry
    flat = t.flatten()
    nz = flat != 0
    if spec is not None:
        _encode_quantized(name, t, spec, nz, part, paper, entry)
        return entry
    sparse = int(nz.sum()) < flat.numel()
    if sparse:
        entry["positions"] = _positions(nz.numpy(), part)
    entry["values"] = part((flat[nz] if sparse else flat).numpy().tobytes())
    index = _best_indices(nz.numpy(), np.zeros(int(nz.sum()), dtype=np.int64), 1, fixed_values=32)
    _count(paper, index["huffman_bits"], index["fixed_bits"])
    return entry


def _encode_quantized(name, t, spec, nz, part, paper, entry) -> None:
    chosen = t.flatten()[nz]
    if spec.method == "uniform":
        scale = spec.scale.to(t.dtype)
        per_entry = scale.expand_as(t).flatten()[nz] if scale.numel() > 1 else scale
        codes = torch.round(chosen * per_entry).to(torch.int64)
        if not torch.equal(codes.to(t.dtype) / per_entry, chosen):
            raise ValueError(f"{name} is not on its quantization grid; quantize it before exporting")
        low = int(codes.min()) if codes.numel() else 0
        symbols, levels = (codes - low).numpy(), (int(codes.max()) - low + 1) if codes.numel() else 1
        entry["low"] = low
        book_bits = 32 * spec.scale.numel()
        entry["quant"] = {"method": "uniform", "bits": spec.bits, "per_channel": spec.per_channel,
                          "scale": spec.scale.flatten().tolist(), "scale_shape": list(spec.scale.shape)}
    else:
        codebook, idx = torch.unique(chosen, return_inverse=True)
        symbols, levels = idx.numpy(), codebook.numel()
        entry["codebook"] = part(codebook.numpy().tobytes())
        book_bits = 32 * levels
        entry["quant"] = {"method": spec.method, "bits": spec.bits, "per_channel": False}
    # The paper stores a layer's sparse structure row by row (CSR) or column by column (CSC); a
    # matrix is scanned the way its coded streams are smaller (a dead input is a dead column).
    best = _best_indices(nz.numpy(), symbols, levels)
    best["order"] = "rows"
    if t.dim() == 2:
        nz_cols, by_cols = _by_columns(nz.numpy(), t.shape)
        cols = _best_indices(nz_cols, symbols[by_cols], levels)
        if cols["huffman_bits"] < best["huffman_bits"]:
            best = {**cols, "order": "cols", "fixed_bits": min(cols["fixed_bits"], best["fixed_bits"])}
    r, gaps, values = best["index_bits"], best["gaps"], best["values"]
    coded = {"index_bits": r, "entries": int(gaps.size), "levels": levels, "order": best["order"],
             "values": _huffman_part(values, levels + 1, part)}
    if r:
        coded["index"] = _huffman_part(gaps, 2 ** r, part)
    entry["huffman"] = coded
    _count(paper, best["huffman_bits"] + book_bits, best["fixed_bits"] + book_bits)


def _by_columns(nz: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(mask in column order, for each nonzero in column order its index among the row-order ones)."""
    rows, cols = shape
    position = np.arange(rows * cols).reshape(rows, cols).T.ravel()  # row-order index of each column-order slot
    rank = np.cumsum(nz) - 1
    nz_cols = nz[position]
    return nz_cols, rank[position[nz_cols]]


def _best_indices(nz: np.ndarray, symbols: np.ndarray, levels: int, fixed_values: int | None = None) -> dict:
    """The relative-index width (0.._MAX_INDEX_BITS) whose Huffman-coded streams are smallest, with
    those streams; `fixed_bits`: the smallest fixed-width count over the widths (the paper's count
    before Huffman coding). Value symbols run 0..levels-1, `levels` marks a filler zero;
    `fixed_values` is the width of a stored value when it is not a code (fp32 values)."""
    best, fixed = None, None
    for r in range(_MAX_INDEX_BITS + 1):
        gaps, filler = huffman.relative_indices(nz, r)
        values = np.full(gaps.size, levels, dtype=np.int64)
        values[~filler] = symbols
        value_counts = np.bincount(values, minlength=levels + 1)
        value_bits = (fixed_values * gaps.size if fixed_values
                      else huffman.coded_bits(value_counts, huffman.huffman_lengths(value_counts))
                      + 8 * (levels + 1))
        index_bits = 0
        if r:
            index_counts = np.bincount(gaps, minlength=2 ** r)
            index_bits = huffman.coded_bits(index_counts, huffman.huffman_lengths(index_counts)) + 8 * 2 ** r
        width = fixed_values or _bits_for(levels + int(filler.any()))
        fixed = min(fixed or math.inf, gaps.size * (r + width))
        if best is None or index_bits + value_bits < best["huffman_bits"]:
            best = {"index_bits": r, "gaps": gaps, "values": values, "huffman_bits": index_bits + value_bits}
    best["fixed_bits"] = fixed
    return best


def _huffman_part(symbols: np.ndarray, alphabet: int, part) -> dict:
    lengths = huffman.huffman_lengths(np.bincount(symbols, minlength=alphabet))
    return {"lengths": part(lengths.astype(np.uint8).tobytes()), "data": part(huffman.encode(symbols, lengths))}


def _unhuffman(p: dict, count: int, part) -> np.ndarray:
    lengths = np.frombuffer(part(p["lengths"]), dtype=np.uint8).astype(np.int64)
    return huffman.decode(part(p["data"]), lengths, count)


def _count(paper: dict, huffman_bits: int, fixed_bits: int) -> None:
    paper["bits"] += huffman_bits
    paper["bits_before_huffman"] += fixed_bits


def _decode(e: dict, part) -> torch.Tensor:
    dtype = getattr(torch, e["dtype"])
    shape, n = e["shape"], math.prod(e["shape"])
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if "dense" in e:
        return torch.from_numpy(np.frombuffer(part(e["dense"]), dtype=np_dtype).copy()).view(shape)
    if "huffman" in e:
        h = e["huffman"]
        count = int(h["entries"])
        gaps = _unhuffman(h["index"], count, part) if h["index_bits"] else np.zeros(count, dtype=np.int64)
        positions = huffman.positions_of(gaps, n)
        symbols = _unhuffman(h["values"], count, part)
        real = symbols != h["levels"]
        nz = np.zeros(n, dtype=bool)
        nz[positions[real]] = True
        symbols = symbols[real]
        if h.get("order") == "cols":
            nz_cols = nz
            nz = nz_cols.reshape(shape[1], shape[0]).T.ravel()
            back = np.empty_like(symbols)
            back[_by_columns(nz, shape)[1]] = symbols
            symbols = back
        symbols = torch.from_numpy(symbols)
        if "codebook" in e:
            codebook = torch.from_numpy(np.frombuffer(part(e["codebook"]), dtype=np_dtype).copy())
            values = codebook[symbols]
        else:
            q = e["quant"]
            scale = torch.tensor(q["scale"], dtype=dtype).view(q["scale_shape"])
            per_entry = scale.expand(shape).flatten()[torch.from_numpy(nz)] if scale.numel() > 1 else scale
            values = (symbols + e["low"]).to(dtype) / per_entry
    else:
        nz = _unpositions(e["positions"], n, part) if "positions" in e else np.ones(n, dtype=bool)
        values = torch.from_numpy(np.frombuffer(part(e["values"]), dtype=np_dtype).copy())
    out = torch.zeros(n, dtype=dtype)
    out[torch.from_numpy(nz)] = values
    return out.view(shape)


def _positions(nz: np.ndarray, part) -> dict:
    """Nonzero positions as a bitmask or as byte gaps (a 255 gap means 'skip 255, no value'),
    whichever codes smaller."""
    mask = _shrink(np.packbits(nz).tobytes())
    gaps = np.diff(np.concatenate([[-1], np.flatnonzero(nz)])) - 1
    stream = []
    for g in gaps.tolist():
        stream += [255] * (g // 255) + [g % 255]
    gap = _shrink(np.asarray(stream, dtype=np.uint8).tobytes())
    if len(mask[1]) <= len(gap[1]):
        return {"kind": "bitmask", **part(mask)}
    return {"kind": "gaps", **part(gap)}


def _shrink(data: bytes) -> tuple[str, bytes]:
    """("lzma", coded) when lzma makes it smaller, else ("raw", data)."""
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_FILTERS)
    return ("lzma", packed) if len(packed) < len(data) else ("raw", data)


def _unpositions(p: dict, n: int, part) -> np.ndarray:
    raw = part(p)
    if p["kind"] == "bitmask":
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)
    nz = np.zeros(n, dtype=bool)
    pos = -1
    for g in np.frombuffer(raw, dtype=np.uint8).tolist():
        if g == 255:
            pos += 255
        else:
            pos += g + 1
            nz[pos] = True
    return nz


def _bits_for(levels: int) -> int:
    return max(1, math.ceil(math.log2(levels))) if levels > 1 else 1


def _plain(v):
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot store {type(v).__name__} in an artifact header")
