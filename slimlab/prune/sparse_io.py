"""Sparse storage so that size on disk reflects sparsity: per tensor a packed bitmask plus the non-zero values."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import torch
from torch import nn

from slimlab.errors import SlimlabError

MAGIC = b"SLIMLAB-SPARSE-1\n"


def save_sparse(state: dict | nn.Module) -> bytes:
    """A state dict (or a model's) as bytes: a JSON header, then each tensor dense or as bitmask + non-zeros, whichever is smaller.

    Layout: MAGIC, header length (uint64 little-endian), UTF-8 JSON header, then the payloads in header order.
    A reader needs only numpy: masks are np.packbits(bitorder='little'), values are raw little-endian bytes of `dtype`.
    """
    state = state.state_dict() if isinstance(state, nn.Module) else state
    entries, chunks = [], []
    for name, value in state.items():
        if not _plain_tensor(value):  # packed quantized weights and non-tensor extras: torch's own format
            buffer = io.BytesIO()
            torch.save(value, buffer)
            entries.append({"name": name, "kind": "torch", "bytes": len(buffer.getvalue())})
            chunks.append(buffer.getvalue())
            continue
        flat = value.detach().cpu().contiguous().reshape(-1)
        mask = flat != 0
        nonzero = int(mask.sum())
        item = flat.element_size()
        entry = {"name": name, "dtype": str(flat.dtype).removeprefix("torch."), "shape": list(value.shape)}
        if (flat.numel() + 7) // 8 + nonzero * item < flat.numel() * item:
            bits = np.packbits(mask.numpy(), bitorder="little").tobytes()
            values = _raw_bytes(flat[mask])
            entries.append({**entry, "kind": "bitmask", "nonzero": nonzero, "bytes": len(bits) + len(values)})
            chunks += [bits, values]
        else:
            raw = _raw_bytes(flat)
            entries.append({**entry, "kind": "dense", "bytes": len(raw)})
            chunks.append(raw)
    header = json.dumps({"format": "slimlab-sparse", "version": 1, "entries": entries}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + b"".join(chunks)


def load_sparse(blob: bytes) -> dict[str, torch.Tensor]:
    """The dense state dict back from save_sparse's bytes, equal element for element."""
    if not blob.startswith(MAGIC):
        raise SlimlabError("not a slimlab sparse file (the magic bytes are missing)")
    start = len(MAGIC)
    (length,) = struct.unpack("<Q", blob[start:start + 8])
    header = json.loads(blob[start + 8:start + 8 + length])
    offset = start + 8 + length
    state: dict[str, torch.Tensor] = {}
    for e in header["entries"]:
        payload = blob[offset:offset + e["bytes"]]
        offset += e["bytes"]
        if e["kind"] == "torch":
            state[e["name"]] = torch.load(io.BytesIO(payload), weights_only=True)
            continue
        dtype = getattr(torch, e["dtype"])
        numel = int(np.prod(e["shape"], dtype=np.int64))
        if e["kind"] == "dense":
            flat = _from_bytes(payload, dtype)
        else:
            mask_len = (numel + 7) // 8
            mask = np.unpackbits(np.frombuffer(payload[:mask_len], np.uint8), count=numel, bitorder="little").astype(bool)
            flat = torch.zeros(numel, dtype=dtype)
            flat[torch.from_numpy(mask)] = _from_bytes(payload[mask_len:], dtype)
        state[e["name"]] = flat.reshape(e["shape"])
    return state


def storage_report(model: nn.Module) -> dict:
    """Bytes of torch.save(state_dict) (dense) against save_sparse (sparse), and their ratio."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    dense, sparse = len(buffer.getvalue()), len(save_sparse(model))
    return {"dense_bytes": dense, "sparse_bytes": sparse, "sparse_to_dense": sparse / dense if dense else 1.0}


def _plain_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_quantized


def _raw_bytes(t: torch.Tensor) -> bytes:
    # A uint8 view covers every dtype, bfloat16 included, which numpy cannot name.
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _from_bytes(payload: bytes, dtype: torch.dtype) -> torch.Tensor:
    raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.empty(0, dtype=torch.uint8)
    return raw.view(dtype)
