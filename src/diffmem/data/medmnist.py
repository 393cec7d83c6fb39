"""MedMNIST files: where they are, how they are named, what they must hold.

MedMNIST files follow the ``medmnist`` package's naming: ``{flag}.npz`` for 28×28 and
``{flag}_{size}.npz`` for 64, 128 and 224, each with ``{train,val,test}_{images,labels}``.
We read them with numpy (``allow_pickle=False``) rather than through ``medmnist``'s Dataset
class, which insists on the official sample counts; ``medmnist`` is used only to download.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


@functools.cache
def _info_table() -> dict:
    """medmnist's ``INFO`` (flags, split sizes, URLs), read from its ``info.py`` without importing
    the package: ``medmnist/__init__`` imports torch, seconds at every DAG build."""
    import importlib.util
    import sys

    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].INFO
    spec = importlib.util.find_spec("medmnist")
    if spec is None or spec.origin is None:
        raise DataError("the medmnist package is not installed; pip install -e . installs it")
    info = importlib.util.spec_from_file_location("_medmnist_info",
                                                  Path(spec.origin).parent / "info.py")
    module = importlib.util.module_from_spec(info)
    info.loader.exec_module(module)
    return module.INFO


def medmnist_info(flag: str) -> dict:
    table = _info_table()
    if flag not in table:
        known = ", ".join(sorted(k for k in table if not k.endswith("3d")))
        raise DataError(f"unknown MedMNIST flag {flag!r}; expected one of: {known}")
    if flag.endswith("3d"):
        raise DataError(f"MedMNIST flag {flag!r} is a 3D dataset; only 2D flags are supported")
    return table[flag]


def medmnist_filename(flag: str, size: int) -> str:
    if size not in SIZES:
        raise DataError(f"image size {size} is not a MedMNIST size; expected one of {SIZES}")
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def medmnist_url(flag: str, size: int) -> str:
    info = medmnist_info(flag)
    return info["url" if size == 28 else f"url_{size}"]


def max_train_size(flag: str) -> int:
    """Official number of training images of a flag (what a subset may at most take)."""
    return int(medmnist_info(flag)["n_samples"]["train"])


def locate_medmnist(flag: str, size: int, root: str | os.PathLike, download: bool) -> Path:
    """The path of ``flag``'s file under ``root``, downloaded with medmnist if allowed."""
    info = medmnist_info(flag)
    root = Path(os.path.expanduser(str(root)))
    path = root / medmnist_filename(flag, size)
    if path.exists():
        return path
    url = medmnist_url(flag, size)
    if not download:
        raise DataError(
            f"MedMNIST file not found: {path}; download it from {url} and put it there "
            f"(or set download: true, or point data_root at the folder that holds it)"
        )
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    try:
        dataset_class = getattr(medmnist, info["python_class"])
        dataset_class(split="train", download=True, root=str(root), size=size)
    except Exception as err:  # medmnist hides the network error behind a generic RuntimeError
        raise DataError(
            f"could not download {path.name} (offline?): put the file from {url} at {path}"
        ) from err
    if not path.exists():
        raise DataError(f"download reported success but {path} is missing; get it from {url}")
    return path


def load_medmnist(path: str | os.PathLike, flag: str, size: int) -> dict[str, np.ndarray]:
    """Read and check a MedMNIST ``.npz``: keys, dtype, layout and size of every split."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:
        raise DataError(f"cannot read {path} as a MedMNIST .npz ({type(err).__name__}: {err}); "
                        f"delete it and download it again from {medmnist_url(flag, size)}") from err
    channels = int(medmnist_info(flag)["n_channels"])
    shape = (size, size) if channels == 1 else (size, size, 3)
    for split in SPLITS:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in arrays:
                raise DataError(f"{path} has no array {split}_{kind!s}; found {sorted(arrays)} "
                                f"(expected the medmnist layout train/val/test _images/_labels)")
        img = arrays[f"{split}_images"]
        if img.dtype != np.uint8 or img.shape[1:] != shape:
            raise DataError(f"{path}: {split}_images is {img.dtype} {img.shape}; expected uint8 "
                            f"(N, {', '.join(map(str, shape))}) for {flag} at size {size}")
        if len(arrays[f"{split}_labels"]) != len(img):
            raise DataError(f"{path}: {split}_labels and {split}_images differ in length")
    return arrays
