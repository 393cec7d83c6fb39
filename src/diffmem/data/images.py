"""A user's own images: a folder of PNG/JPEG files (searched recursively) or an ``.npz``.

Images are brought to the model's input as its training pipeline did: the shorter side resized
to the model's size and the centre cropped (``resize: true``, the diffusers training examples'
``Resize`` + ``CenterCrop``), or taken as they are when they already have that size
(``resize: false``); then converted to grey or RGB for the model's channels. 16-bit images are
scaled to 8 bits (the workflow's pixels are uint8 everywhere). Every problem is one
:class:`~diffmem.errors.DataError` line naming the file.

Folders are searched recursively, symlinked subfolders included (each real folder once, so a
link back up the tree ends there); a broken link to an image is refused, never skipped.
:func:`check_images` reads every image's header when the DAG is built and gives a digest of
what a source holds (every file's relative path, size and modification time), a param of the
jobs that read it, so replacing an image re-runs them and an unchanged folder re-runs nothing.

:func:`dataset_arrays` gives any dataset (a MedMNIST file or your own images) the MedMNIST
layout the stages read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .medmnist import load_medmnist, locate_medmnist

EXTENSIONS = (".png", ".jpg", ".jpeg")


# PIL modes read_images converts to grey or RGB
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B",
         "I;16L")


def list_image_files(folder: str | Path) -> list[Path]:
    """PNG/JPEG files under ``folder`` (recursively, following symlinked subfolders, each real
    folder once), in a fixed order: sorted relative paths."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a loop, or a second link to a folder already read
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        for name in names:
            path = Path(root) / name
            if path.suffix.lower() not in EXTENSIONS or name.startswith("."):
                continue
            if not path.exists():
                raise DataError(f"{path} is a broken link; expected an image file")
            if path.is_file():
                files.append(path)
    if not files:
        raise DataError(f"no PNG/JPEG images in {folder} (searched recursively for "
                        f"{', '.join(EXTENSIONS)})")
    return sorted(files)


def check_images(source: str | Path, *, size: int, resize: bool = True) -> dict:
    """Every image of a source checked from its header before any job (it opens, its mode is
    one read_images converts, and with ``resize`` false it has the model's size); returns its
    ``count`` and the ``digest`` of what it holds (see the module docstring)."""
    path = Path(source).expanduser()
    if path.suffix == ".npz":
        images = _npz_images(path)
        if not resize and images.shape[1:3] != (size, size):
            raise DataError(f"{path}: images are {images.shape[2]}x{images.shape[1]}; expected "
                            f"{size}x{size}, the size the audit reads (set resize: true to "
                            f"resize the shorter side and crop the centre)")
        st = path.stat()
        return {"count": int(len(images)),
                "digest": _digest([[path.name, st.st_size, st.st_mtime_ns]])}
    from PIL import Image

    rows = []
    for f in list_image_files(path):
        try:
            with Image.open(f) as img:  # the header only: no pixel is decoded here
                mode, (w, h) = img.mode, img.size
        except Exception as err:
            raise DataError(f"cannot read image {f} ({err})") from None
        if mode not in MODES:
            raise DataError(f"{f} has PIL mode {mode!r}; expected one of {', '.join(MODES)}")
        if not resize and (w, h) != (size, size):
            raise DataError(f"{f} is {w}x{h}; expected {size}x{size}, the size the audit "
                            f"reads (set resize: true to resize the shorter side and crop the "
                            f"centre)")
        st = f.stat()
        rows.append([f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return {"count": len(rows), "digest": _digest(rows)}


def image_size(source: str | Path) -> int:
    """The shorter side of a source's first image (its header only): the size a ``generated``
    entry's images are brought to unless it says otherwise."""
    path = Path(source).expanduser()
    if path.suffix == ".npz":
        return int(min(_npz_images(path).shape[1:3]))
    from PIL import Image

    first = list_image_files(path)[0]
    try:
        with Image.open(first) as img:
            return int(min(img.size))
    except Exception as err:
        raise DataError(f"cannot read image {first} ({err})") from None


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def same_images(a: str | Path, b: str | Path) -> bool:
    """Whether two sources are one set of images: the same resolved path, or the same file
    contents (a copy of the training folder given as held-out images)."""
    pa, pb = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    if pa == pb:
        return True

    def contents(p):
        if p.suffix == ".npz":
            return sorted([hashlib.sha256(x.tobytes()).hexdigest() for x in _npz_images(p)])
        return sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in list_image_files(p))

    if pa.is_dir() != pb.is_dir() or count_images(pa) != count_images(pb):
        return False
    return contents(pa) == contents(pb)


def count_images(source: str | Path) -> int:
    """How many images a source holds, cheaply (for the config checks before any job)."""
    path = Path(source).expanduser()
    if path.suffix == ".npz":
        return len(_npz_images(path))
    return len(list_image_files(path))


def _npz_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            key = "images" if "images" in f.files else None
            if key is None:
                raise DataError(f"{path} has no array 'images'; found {sorted(f.files)} "
                                f"(expected images of shape (N, H, W) or (N, H, W, C))")
            images = f[key]
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read {path} as an .npz without pickles ({err})") from None
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"{path}: images has shape {images.shape}; expected (N, H, W) or "
                        f"(N, H, W, 1 or 3)")
    if images.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: images is {images.dtype}; expected uint8 or uint16 pixels")
    if min(images.shape[1:3]) < 2:  # (10, 0, 0) would end in a traceback in the job
        raise DataError(f"{path}: images has shape {images.shape}; expected images of at least "
                        f"2 × 2 pixels")
    return images


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16 or a.max() > 255:  # 16-bit PNGs: full range to 8 bits
        return np.round(a.astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)
    return a.clip(0, 255).astype(np.uint8)


def _pil(path: Path):
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as err:
        raise DataError(f"cannot read image {path} ({err})") from None
    return img


def _array(img, channels: int) -> np.ndarray:
    """uint8 (H, W) for one channel, (H, W, 3) for three, from any PIL mode (16-bit too)."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = _to_uint8(np.asarray(img).astype(np.uint32))
        img = Image.fromarray(a, mode="L")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" \
            else img.convert("RGB")
    img = img.convert("L" if channels == 1 else "RGB")
    return np.asarray(img, dtype=np.uint8)


def _resize(a: np.ndarray, size: int, resize: bool, where: str) -> np.ndarray:
    from PIL import Image

    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    if not resize:
        raise DataError(f"{where} is {w}x{h}; expected {size}x{size}, the size the audit reads "
                        f"(set resize: true to resize the shorter side and crop the centre)")
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(a).resize((nw, nh), Image.BILINEAR)  # antialiased when shrinking
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img)[top:top + size, left:left + size]


def read_images(source: str | Path, *, size: int, channels: int, resize: bool = True
                ) -> tuple[np.ndarray, list[str]]:
    """uint8 images (N, size, size) for one channel or (N, size, size, 3) for three, and a name
    per image (its path relative to the folder, or ``#i`` for an ``.npz``)."""
    if channels not in (1, 3):
        raise DataError(f"images for {channels} channels: expected 1 (grey) or 3 (RGB)")
    path = Path(source).expanduser()
    out, names = [], []
    if path.suffix == ".npz":
        from PIL import Image

        raw = _npz_images(path)
        for i, a in enumerate(raw):
            a = _to_uint8(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
            img = Image.fromarray(a)
            out.append(_resize(_array(img, channels), size, resize, f"{path} image {i}"))
            names.append(f"#{i}")
    else:
        for f in list_image_files(path):
            out.append(_resize(_array(_pil(f), channels), size, resize, str(f)))
            names.append(f.relative_to(path).as_posix())
    return np.stack(out), names


def dataset_arrays(name: str, entry: dict | None, size: int, root: str, download: bool
                   ) -> dict[str, np.ndarray]:
    """A dataset's splits in the MedMNIST layout: a MedMNIST file (``entry`` None), or your own
    images (``entry`` with ``train`` and ``heldout`` folders or .npz files), the held-out images
    as ``val`` and an empty ``test``. Your images carry no labels (zeros)."""
    if entry is None:
        return load_medmnist(locate_medmnist(name, size, root, download), name, size)

    kw = dict(size=size, channels=int(entry.get("channels", 1)),
              resize=bool(entry.get("resize", True)))
    train, _ = read_images(entry["train"], **kw)
    heldout, _ = read_images(entry["heldout"], **kw)
    def zeros(n):
        return np.zeros((n, 1), np.uint8)

    return {"train_images": train, "train_labels": zeros(len(train)),
            "val_images": heldout, "val_labels": zeros(len(heldout)),
            "test_images": heldout[:0], "test_labels": zeros(0)}


def to_channels(images: np.ndarray, to_rgb: bool) -> np.ndarray:
    """Grey (N, H, W) stays as it is unless ``to_rgb``; then it is repeated to (N, H, W, 3)."""
    if to_rgb and images.ndim == 3:
        return np.repeat(images[..., None], 3, axis=-1)
    return images
