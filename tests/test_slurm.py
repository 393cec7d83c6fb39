"""The small test config through a real single-node SLURM cluster (tests/slurm/start.sh).

Skipped, with the reason, only where the cluster cannot be started (not root, no apt-get, or the
daemons fail), and only outside CI: with ``CI`` set a failed start fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from diffmem.io import load_safetensors

from .conftest import ROOT, workflow_copy

RUN = "results/breastmnist/n64/seed0"
GPU_RULES = ["train_dpm", "sample", "train_fingerprint_classifiers", "detect_reproductions",
             "boundary_search", "train_surrogate_classifier", "side_extract"]


def cannot_start(reason: str) -> None:
    """Skip with the reason on a developer's machine; fail under CI (``CI`` set), where the
    cluster is expected to start, so a CI run never loses the SLURM test silently."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        cannot_start("a SLURM test cluster needs root and apt-get (Debian) on this machine")
    start = subprocess.run(["bash", str(ROOT / "tests/slurm/start.sh")], capture_output=True,
                           text=True, timeout=600)
    if start.returncode != 0:
        cannot_start(f"SLURM could not be started: {start.stderr.strip()[-500:]}")
    yield
    subprocess.run(["bash", str(ROOT / "tests/slurm/stop.sh")], timeout=60)


def test_slurm_run_submits_jobs_and_matches_the_local_run(slurm_cluster, finished, tmp_path):
    wf = workflow_copy(tmp_path)
    shutil.copy(finished / "test.yaml", wf / "test.yaml")
    # the profile's site values (32 GB, 8 CPUs for training) do not fit this 2-core node
    small = [f"{rule}:{key}={value}" for rule in GPU_RULES
             for key, value in (("mem_mb", 1500), ("cpus_per_task", 1))]
    # two independent jobs at once, a CPU rule (the imported model's images) and a GPU rule
    # (training, on the local run's data): the plugin polls after 1, 12, 33, ... s, and resets
    # that clock when a job ends, so every further job in a chain costs the suite up to half a
    # minute. The data are the local run's files (their modification times kept, as Snakemake
    # compares them; prepare_data's determinism is test_data.py's byte-identical rerun).
    shutil.copytree(finished / RUN / "data", wf / RUN / "data", copy_function=shutil.copy2)
    own = "results/models/own/data"
    targets = [f"{own}/train.npz", f"{RUN}/model/model.safetensors"]
    cmd = ["timeout", "-s", "INT", "900", sys.executable, "-m", "snakemake",
           "--workflow-profile", "workflow/profiles/slurm", "--configfile", "test.yaml",
           "--slurm-no-account", "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "1",
           "--default-resources", "mem_mb=1000", "cpus_per_task=1", "slurm_partition=cpu",
           "runtime=30", "--set-resources", *small, "--", *targets]
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=960)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(job_ids) == 2, out[-3000:]  # import_images, train_dpm
    submitted = re.findall(r"rule_(import_images|train_dpm)/", out)  # their SLURM log folders
    assert set(submitted) == {"import_images", "train_dpm"}
    # the same outputs as the local run
    for name in ("train.npz", "heldout.npz", "unused_train.npz"):
        assert (wf / own / name).read_bytes() == (finished / own / name).read_bytes()
    w_slurm, _ = load_safetensors(wf / RUN / "model/model.safetensors")
    w_local, _ = load_safetensors(finished / RUN / "model/model.safetensors")
    for k in w_local:
        np.testing.assert_allclose(w_slurm[k].numpy(), w_local[k].numpy(), atol=1e-4)
    cfg = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert cfg["executor"] == "slurm"


@pytest.mark.parametrize("ci,outcome", [("true", "failed"), ("1", "failed"), ("", "skipped"),
                                        ("false", "skipped")])
def test_a_cluster_that_cannot_start_fails_under_ci_and_skips_elsewhere(monkeypatch, ci,
                                                                        outcome):
    monkeypatch.setenv("CI", ci)
    kind = pytest.fail.Exception if outcome == "failed" else pytest.skip.Exception
    with pytest.raises(kind, match="SLURM could not be started: slurmd died"):
        cannot_start("SLURM could not be started: slurmd died")
