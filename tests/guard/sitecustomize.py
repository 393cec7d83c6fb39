"""Test guard (tests/conftest.py puts this folder on the PYTHONPATH of the shared end-to-end run):
in every Python process it starts, the calls that unpickle raise, and each attempt is logged.

* ``pickle.load`` and ``pickle.Unpickler`` raise (Snakemake's own ``pickle.loads`` of the job
  object it hands a script stays: the workflow wrote it, the user did not);
* ``torch.load`` and ``numpy.load(allow_pickle=True)`` raise, patched as soon as torch or numpy
  is imported.

``$DIFFMEM_GUARD_LOG`` gets a line ``active <argv>`` per process and ``ATTEMPT <call> <argv>``
per refused call, so a test can check both that every job ran guarded and that none tried.
"""

import importlib.abc
import os
import pickle
import sys

_LOG = os.environ.get("DIFFMEM_GUARD_LOG")


def _write(line: str) -> None:
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(f"{line} {' '.join(sys.argv[:2])}\n")


def _refused(what: str):
    def refuse(*args, **kwargs):
        _write(f"ATTEMPT {what}")
        raise RuntimeError(f"unpickling is refused in diffmem's jobs: {what} was called")

    return refuse


class _NoUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        _refused("pickle.Unpickler")()


pickle.load = _refused("pickle.load")
pickle.Unpickler = _NoUnpickler


def _patch_torch(torch) -> None:
    torch.load = _refused("torch.load")
    if hasattr(torch, "serialization"):
        torch.serialization.load = torch.load


def _patch_numpy(numpy) -> None:
    load = numpy.load

    def guarded(*args, **kwargs):
        allow = kwargs.get("allow_pickle", args[2] if len(args) > 2 else False)
        if allow:
            _refused("numpy.load(allow_pickle=True)")()
        return load(*args, **kwargs)

    numpy.load = guarded


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patch torch and numpy right after they are imported (importing them here would cost every
    process seconds)."""

    patches = {"torch": _patch_torch, "numpy": _patch_numpy}

    def find_spec(self, name, path, target=None):
        if name not in self.patches:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, self.patches[name])
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)


sys.meta_path.insert(0, _AfterImport())
_write("active")
