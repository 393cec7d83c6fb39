"""Shared fixtures: the real BreastMNIST file in ../shared/data and the small test config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Each of the suite's two pytest-xdist workers computes on one thread. Two processes that each
# run a thread per core slow small-tensor work more than tenfold on a 2-core machine (200 steps
# of the own-model fixture's training: 6 s alone, 80 s beside a second such process, 6.4 s with
# one thread each). Set before numpy and torch are imported; Snakemake gives its jobs their
# rule's threads itself.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFMEM_TEST_DATA", ROOT.parent / "shared" / "data"))
TEST_CONFIG = ROOT / "workflow" / "configs" / "test.yaml"


# the session fixtures of the shared end-to-end run (the MONAI model's own run, and the tests
# that use its fixture, are a group of their own: the other worker runs them meanwhile)
SHARED_RUN = {"finished", "own_model", "latent_model"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """The suite runs in two pytest-xdist workers (``-n 2 --dist loadgroup`` in pyproject.toml);
    a session- or module-scoped fixture is built once in every worker that uses it. So the tests
    of the shared end-to-end run are one group, which goes first (it is the longest: the other
    worker takes everything else meanwhile), and every other test is grouped with its module."""
    for item in items:
        shared = bool(SHARED_RUN & set(item.fixturenames))
        item.add_marker(pytest.mark.xdist_group("e2e" if shared else item.module.__name__))
    items.sort(key=lambda item: not SHARED_RUN & set(item.fixturenames))  # stable


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (SHARED_DATA / "breastmnist.npz").exists():
        pytest.fail(f"test data missing: {SHARED_DATA / 'breastmnist.npz'} "
                    f"(set DIFFMEM_TEST_DATA to the folder that holds it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_config() -> dict:
    return yaml.safe_load(TEST_CONFIG.read_text())


@pytest.fixture
def fake_root(tmp_path) -> Path:
    """A data root with a tiny, well-formed fake breastmnist.npz (random pixels)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    return tmp_path


def workflow_copy(tmp_path: Path) -> Path:
    """A copy of the workflow (no results) to run Snakemake in isolation."""
    dst = tmp_path / "wf"
    dst.mkdir()
    for name in ("Snakefile", "config.yaml", "rules", "workflow", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / name)
    return dst


def local_env() -> dict:
    """The environment of a local Snakemake run in the tests.

    snakemake-executor-plugin-slurm runs ``scontrol show config`` when it is imported, by every
    Snakemake call; once the SLURM test has installed the tools and stopped its daemons, that
    call waits 10 s for a controller that is gone. Local runs never use SLURM, so a stand-in
    ``scontrol`` that fails at once goes first on their PATH (the plugin then takes its
    no-SLURM default, as on a machine without SLURM)."""
    stub = Path(tempfile.gettempdir()) / "diffmem-test-no-scontrol"
    if not (stub / "scontrol").exists():
        # written whole, then renamed: both of the suite's workers may get here at once
        stub.mkdir(exist_ok=True)
        part = stub / f"scontrol.{os.getpid()}"
        part.write_text("#!/bin/sh\nexit 1\n")
        part.chmod(0o755)
        part.replace(stub / "scontrol")
    return dict(os.environ, PATH=f"{stub}{os.pathsep}{os.environ.get('PATH', '')}")


GUARD = ROOT / "tests" / "guard"  # a sitecustomize that makes every unpickling call raise


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True,
              timeout: int = 600, guard_log: Path | None = None) -> subprocess.CompletedProcess:
    """``snakemake --cores 2`` in ``workdir``; with ``guard_log`` every process it starts runs
    under tests/guard/sitecustomize.py, which logs there (see that file)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--workflow-profile", "none",
           *args]
    if config is not None:  # last: --configfile takes several values and would eat targets
        cmd += ["--configfile", str(config)]
    env = local_env()
    if guard_log is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD), env.get("PYTHONPATH")) if p)
        env["DIFFMEM_GUARD_LOG"] = str(guard_log)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def own_model(tmp_path_factory, data_root) -> dict:
    """A model the user already has (trained until it copies 4 PNGs), with its PNG folders;
    tests that change it work on a copy."""
    from .own_model import make_own_model

    return make_own_model(tmp_path_factory.mktemp("own"), data_root)


@pytest.fixture(scope="session")
def latent_model(tmp_path_factory, data_root) -> dict:
    """A latent model the user already has (a diffusers LDMPipeline folder with vae/: an
    autoencoder trained on 160 images, a U-Net trained until it copies 6), its barely trained
    twin, and their training and held-out images (.npz)."""
    from .latent_model import make_latent_model

    return make_latent_model(tmp_path_factory.mktemp("latent"), data_root)


@pytest.fixture(scope="session")
def monai_model(tmp_path_factory, data_root) -> dict:
    """A MONAI latent model as its bundle ships it (inference.json, .pt weights), converted
    once by ``python -m diffmem.convert monai`` (as a user would, where they trust the files),
    and its barely trained twin, converted the same way."""
    from .monai_model import make_monai_model

    root = tmp_path_factory.mktemp("monai")
    info = make_monai_model(root, data_root)
    for name in ("bundle", "barely"):
        out = root / f"{name}-converted"
        subprocess.run([sys.executable, "-m", "diffmem.convert", "monai", info[name], str(out)],
                       check=True, capture_output=True, text=True, timeout=300)
        info[f"{name}_converted"] = str(out)
    return info


@pytest.fixture(scope="session")
def monai_finished(tmp_path_factory, data_root, monai_model):
    """The MONAI model audited end to end from one `models:` entry (its converted bundle, its
    scale factor), with nothing to train (`datasets: []`), every job under the unpickling
    guard as in the shared run."""
    wf = workflow_copy(tmp_path_factory.mktemp("monairun"))
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["data_root"] = str(data_root)
    cfg["datasets"] = []
    cfg["models"] = {"monai": {"folder": monai_model["bundle_converted"],
                               "train": monai_model["train"], "heldout": monai_model["heldout"],
                               "scale_factor": monai_model["scale_factor"],
                               "sample": {"sampler": "ddpm", "steps": 100}}}
    (wf / "monai.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, config=wf / "monai.yaml", guard_log=wf / "guard.log")
    (wf / "run.log").write_text(proc.stdout + proc.stderr)
    return wf


@pytest.fixture(scope="session")
def finished(tmp_path_factory, data_root, own_model, latent_model):
    """One complete local run of the test config, shared by the workflow and SLURM tests."""
    from .own_model import write_pngs

    wf = workflow_copy(tmp_path_factory.mktemp("run"))
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["data_root"] = str(data_root)
    # a model the user already has (trained until it copies), audited through `models:`
    own = own_model
    cfg["models"] = {"own": {**own, "sample": {"sampler": "ddpm", "steps": 100}},
                     # and a latent one (an autoencoder and a U-Net on its latents)
                     "latent": {**{k: latent_model[k] for k in ("folder", "train", "heldout")},
                                "sample": {"sampler": "ddpm", "steps": 100}}}
    # a site's own PNGs (its training and held-out images; as a dataset of the fingerprint
    # study they are planned and read in test_a_dataset_of_your_own_pngs_..., which runs the
    # branch's first jobs: the rest is the code the MedMNIST run runs here)
    site = tmp_path_factory.mktemp("site")
    with np.load(data_root / "breastmnist.npz") as f:
        write_pngs(f["test_images"][:24], site / "train", "s")
        write_pngs(f["test_images"][24:48], site / "heldout", "h")
    # a generator's images without its model: the site's training images moved by a pixel, as
    # nested PNGs (one 16-bit), to be audited with the site's training and held-out images
    with np.load(data_root / "breastmnist.npz") as f:
        write_pngs(np.roll(f["test_images"][:24], 1, axis=2), site / "generated", "g")
    # and the same images with no held-out images: scored without a null (a model entry
    # without them is scored the same way; its membership stage is checked in
    # test_membership.py)
    cfg["generated"] = {"shifted": {"images": str(site / "generated"),
                                    "train": str(site / "train"),
                                    "heldout": str(site / "heldout")},
                        "nonull": {"images": str(site / "generated"),
                                   "train": str(site / "train")}}
    # and the known-truth study of the copy verdict, with 2 seeds
    cfg["study"] = {"dataset": "breastmnist", "seeds": 2}
    (wf / "test.yaml").write_text(yaml.safe_dump(cfg))
    # every job runs with unpickling made to raise (and logged): nothing a user gave, and
    # nothing else, is unpickled in the audit
    proc = snakemake(wf, config=wf / "test.yaml", guard_log=wf / "guard.log")
    (wf / "run.log").write_text(proc.stdout + proc.stderr)
    return wf
