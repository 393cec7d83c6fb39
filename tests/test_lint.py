"""Static checks: snakemake --lint, snakefmt and ruff must be clean."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT, TEST_CONFIG


def run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_snakemake_lint_has_no_warnings():
    p = run(sys.executable, "-m", "snakemake", "--lint", "--configfile", str(TEST_CONFIG),
            "--workflow-profile", "none")
    out = p.stdout + p.stderr
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_snakefiles_are_snakefmt_formatted():
    p = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert p.returncode == 0, p.stdout + p.stderr


def test_python_is_ruff_clean():
    p = run(sys.executable, "-m", "ruff", "check", "src", "tests", "workflow/scripts")
    assert p.returncode == 0, p.stdout + p.stderr
