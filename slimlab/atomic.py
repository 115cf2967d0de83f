"""The one way slimlab writes a file: to a temporary file beside it, fsync, rename.

A reader (another process, another node on a shared filesystem, a run resumed after SIGKILL) sees the old file or the
new one, never half of one. Files are readable by the group, so a store or a dataset cache can be shared on a cluster.
A killed writer leaves only a `.NAME.HOST.PID.*.tmp` file, which `Store` sweeps.
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: changing it later, while a heartbeat thread writes, would race


def temp_prefix(path: Path) -> str:
    """Temporary files name their target, host and pid, so a sweep can tell a dead writer's file from a live one's."""
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; on a clean exit, fsync it and rename it to `path`; on an error, delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) | 0o040)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, data: bytes) -> None:
    """`data` as the whole of `path`, written atomically."""
    with atomic_file(path) as f:
        f.write(data)


def save_torch_atomic(obj: object, path: Path) -> None:
    """torch.save(obj) as the whole of `path`, written atomically (torch is imported only by callers that have it)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())
