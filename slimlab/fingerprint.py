"""Content fingerprints of the files a config names (a checkpoint, an image folder), so that replacing a file's
contents makes a new run instead of reusing the old results under the same path."""
from __future__ import annotations

import hashlib
from pathlib import Path

_memo: dict[tuple, str] = {}  # (path, size, mtime) -> digest: a checkpoint is hashed once per process, not per call


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes; for a folder, of its file listing with sizes and modification times."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _memo:
            _memo[key] = sha256_of(path)
        return _memo[key]
    listing = "\n".join(f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()
