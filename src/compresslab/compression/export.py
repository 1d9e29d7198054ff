"""The compressed artifact: a file that is really as small as the compression claims.

`save_artifact(path, model, model_cfg, input_shape, num_classes, data)` writes the model so that
- a sparse tensor stores only the positions of its nonzeros (a bitmask or byte gaps between them,
  whichever is smaller) and their values;
- a quantized tensor stores packed integer codes (b bits each) with their scales (uniform), or
  packed indices into its codebook (k-means weight sharing);
- every part is lzma-coded when that makes it smaller.
`load_artifact(path)` rebuilds the nn.Module, bit-for-bit equal to the model that was saved.

The file is a JSON header plus raw byte parts; reading it runs no pickle, so it can never run code.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compresslab.compression.transforms import QuantSpec, quantization_of
from compresslab.errors import CheckpointError

MAGIC = b"COMPRESSLAB-ARTIFACT\n"
FORMAT = "compresslab.artifact/1"
# Raw lzma streams: the .xz container's ~60 bytes of framing per part would cost more than they check.
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def save_artifact(path: Path, model: nn.Module, model_cfg: dict, input_shape, num_classes: int,
                  data: str) -> int:
    """Write `model` compactly to `path` (atomically); returns the file's size in bytes.
    Pass the same model config, input shape, class count and dataset name as to checkpoint.save_model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    specs = quantization_of(model)
    blob = bytearray()
    entries = []

    def part(data: bytes | tuple) -> dict:
        codec, stored = data if isinstance(data, tuple) else _shrink(data)
        entry = {"offset": len(blob), "length": len(stored), "codec": codec}
        blob.extend(stored)
        return entry

    for name, t in model.state_dict().items():
        entries.append(_encode(name, t.detach().cpu(), specs.get(name), part))
    header = {"format": FORMAT, "model": dict(model_cfg), "input_shape": list(input_shape),
              "num_classes": int(num_classes), "data": data, "tensors": entries}
    head = json.dumps(header, separators=(",", ":"), default=_plain).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(MAGIC + struct.pack("<I", len(head)) + head + bytes(blob))
    os.replace(tmp, path)
    return path.stat().st_size


def load_artifact(path) -> nn.Module:
    """The nn.Module stored by `save_artifact`, with its quantization recorded on it."""
    from compresslab.models import build_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"artifact {path} does not exist; give the model.clz a compressed job wrote")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a compresslab artifact (no {MAGIC!r} header)")
    try:
        (n,) = struct.unpack_from("<I", raw, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(raw[start:start + n])
        body = memoryview(raw)[start + n:]

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
    except (struct.error, ValueError, KeyError, lzma.LZMAError) as e:
        raise CheckpointError(f"artifact {path} is corrupt ({e}); export it again") from e
    model = build_model(header["model"], header["input_shape"], header["num_classes"])
    model.load_state_dict(state)
    quantization_of(model).update(specs)
    return model.eval()


# -- tensor coding ------------------------------------------------------------------------------

def _encode(name: str, t: torch.Tensor, spec: QuantSpec | None, part) -> dict:
    entry = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if not t.is_floating_point() or t.numel() < 64:
        entry["dense"] = part(t.numpy().tobytes())
        return entry
    flat = t.flatten()
    nz = flat != 0
    sparse = int(nz.sum()) < flat.numel()
    if sparse:
        entry["positions"] = _positions(nz.numpy(), part)
    chosen = flat[nz] if sparse else flat
    if spec is not None and spec.method == "uniform":
        scale = spec.scale.to(t.dtype)
        per_entry_scale = scale.expand_as(t).flatten()[nz] if sparse and scale.numel() > 1 \
            else (scale.expand_as(t).flatten() if scale.numel() > 1 else scale)
        codes = torch.round(chosen * per_entry_scale).to(torch.int64)
        if not torch.equal(codes.to(t.dtype) / per_entry_scale, chosen):
            raise ValueError(f"{name} is not on its quantization grid; quantize it before exporting")
        low = int(codes.min()) if codes.numel() else 0
        bits = _bits_for(int(codes.max()) - low + 1 if codes.numel() else 1)
        entry["codes"] = {"low": low, "bits": bits, "data": part(_pack(codes - low, bits))}
        entry["quant"] = {"method": "uniform", "bits": spec.bits, "per_channel": spec.per_channel,
                          "scale": spec.scale.flatten().tolist(), "scale_shape": list(spec.scale.shape)}
    elif spec is not None:
        codebook, idx = torch.unique(chosen, return_inverse=True)
        bits = _bits_for(codebook.numel())
        entry["codebook"] = {"bits": bits, "values": part(codebook.numpy().tobytes()),
                             "data": part(_pack(idx, bits))}
        entry["quant"] = {"method": spec.method, "bits": spec.bits, "per_channel": False}
    else:
        entry["values"] = part(chosen.numpy().tobytes())
    return entry


def _decode(e: dict, part) -> torch.Tensor:
    dtype = getattr(torch, e["dtype"])
    shape, n = e["shape"], math.prod(e["shape"])
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if "dense" in e:
        return torch.from_numpy(np.frombuffer(part(e["dense"]), dtype=np_dtype).copy()).view(shape)
    nz = _unpositions(e["positions"], n, part) if "positions" in e else np.ones(n, dtype=bool)
    count = int(nz.sum())
    if "codes" in e:
        c = e["codes"]
        codes = torch.from_numpy(_unpack(part(c["data"]), c["bits"], count)) + c["low"]
        q = e["quant"]
        scale = torch.tensor(q["scale"], dtype=dtype).view(q["scale_shape"])
        per_entry = scale.expand(shape).flatten()[torch.from_numpy(nz)] if scale.numel() > 1 else scale
        values = codes.to(dtype) / per_entry
    elif "codebook" in e:
        c = e["codebook"]
        codebook = torch.from_numpy(np.frombuffer(part(c["values"]), dtype=np_dtype).copy())
        values = codebook[torch.from_numpy(_unpack(part(c["data"]), c["bits"], count))]
    else:
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


def _pack(values: torch.Tensor, bits: int) -> bytes:
    """Non-negative integers < 2^bits, `bits` bits each, little-endian bit order."""
    v = values.numpy().astype(np.uint32)[:, None]
    planes = ((v >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def _unpack(raw: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (planes.reshape(count, bits).astype(np.int64) * weights).sum(axis=1)


def _plain(v):
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot store {type(v).__name__} in an artifact header")
