"""Finding, verifying, downloading and atomically caching dataset files."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import torch

from slimlab.atomic import atomic_file
from slimlab.errors import DataNotFoundError
from slimlab.fingerprint import sha256_of


def find_file(relative: str, roots: tuple[Path, ...]) -> Path | None:
    """The first root that holds `relative`, or None."""
    for root in roots:
        candidate = Path(root).expanduser() / relative
        if candidate.exists():
            return candidate
    return None


def fetch(relative: str, roots: tuple[Path, ...], url: str | None, sha256: str | None, download: bool,
          how_to_get: str = "") -> Path:
    """Find `relative` under a root, or download it into the first root; verify the checksum either way.
    `how_to_get` tells the user where a file without a download address comes from."""
    found = find_file(relative, roots)
    if found is None:
        if not (download and url):
            raise DataNotFoundError(missing_file_message(relative, roots, url, download, how_to_get))
        found = Path(roots[0]).expanduser() / relative
        found.parent.mkdir(parents=True, exist_ok=True)
        _download(url, found)
    if sha256 and found.is_file():
        actual = sha256_of(found)
        if actual != sha256:
            raise DataNotFoundError(f"{found} has sha256 {actual[:16]}..., expected {sha256[:16]}...: the file is corrupt or a different version; delete it")
    return found


def missing_file_message(relative: str, roots: tuple[Path, ...], url: str | None, download: bool, how_to_get: str = "") -> str:
    """Where the file was looked for, how to get it, and how to point slimlab at another folder."""
    where = ", ".join(str(Path(r).expanduser()) for r in roots)
    if url:
        get = f"download it from {url} into one of them, or set data.download: true to let slimlab do so"
    else:
        get = (how_to_get or "it has no download address") + (
            " (data.download: true cannot help: there is no address to download it from)" if download else "")
    return (f"'{relative}' not found in: {where}. {get}. Another folder can be searched with data.root in the config "
            f"or SLIMLAB_DATA=DIR[:DIR...] in the environment")


def _download(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_file(target) as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as exc:
        raise DataNotFoundError(f"could not download {url}: {exc}") from exc


def load_tensors(path: Path) -> dict:
    return torch.load(path, weights_only=True)
