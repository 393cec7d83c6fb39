"""File helpers: deterministic ``.npz``, atomic writes, safetensors, JSON.

Every writer goes through a temporary file in the destination folder and ``os.replace``, so a
crash never leaves a file that looks finished; the finished file gets the mode a plain ``open``
would give it under the user's umask (``mkstemp``'s temporary is 0600), so colleagues on a
shared cluster can read the results when the umask lets them. Archives carry a fixed timestamp
so that the same arrays give byte-identical files (Snakemake's caching and the determinism tests
rely on it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .errors import DataError

_EPOCH = (1980, 1, 1, 0, 0, 0)


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of a file's sha256, read in 4 MB blocks (a weights file of
    several GB is never held in memory whole)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write an uncompressed ``.npz`` that is byte-identical for identical arrays."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(arrays[name]), allow_pickle=False)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` without ever unpickling."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_json(path: str | os.PathLike, obj: Mapping | list) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def load_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_safetensors(path: str | os.PathLike, tensors: Mapping, metadata: Mapping | None = None):
    """Atomically write torch tensors as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_safetensors(path: str | os.PathLike, device: str = "cpu"):
    """Load tensors and metadata from a safetensors file (no pickle involved); a tensor holding
    NaN or infinity is refused with one line naming it (a model with one samples noise)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        for k in f.keys():
            out[k] = f.get_tensor(k)
    bad = [k for k, v in out.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise DataError(f"{path}: {len(bad)} tensors hold NaN or infinite values "
                        f"({', '.join(bad[:3])}); expected finite weights")
    return out, meta


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically as PNG without a timestamp, then close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def save_csv(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame as CSV (no index column), atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
