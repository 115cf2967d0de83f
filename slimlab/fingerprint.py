"""Content fingerprints of the files a config names (a checkpoint, an image folder), so that replacing a file's
contents makes a new run instead of reusing the old results under the same path, while a copy or a move does not."""
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


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        _memo[key] = sha256_of(path)
    return _memo[key]


def content_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes; for a folder, of each file's relative name and bytes (not its times or location).
    Each file is read once per process while its size and modification time stay the same."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    listing = "\n".join(f"{p.relative_to(path).as_posix()}:{_file_digest(p)}" for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()
