"""Static checks: snakemake --lint, snakefmt and ruff must be clean."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT, TEST_CONFIG, local_env


def run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=local_env())


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


def lint_imports(cwd, pythonpath):
    import os

    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    # lint-imports, as its console script runs it
    code = "import sys; from importlinter.cli import lint_imports_command; " \
           "sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_layers_hold():
    p = lint_imports(ROOT, ROOT / "src")
    assert p.returncode == 0 and "3 kept, 0 broken" in p.stdout, p.stdout + p.stderr


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """The contract is not vacuous: a metrics module that imports a stage fails it, by name."""
    import shutil

    shutil.copytree(ROOT / "src/diffmem", tmp_path / "src/diffmem")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "src/diffmem/metrics/similarity.py"
    planted.write_text(planted.read_text() + "\nfrom ..stages import verdict  # noqa: E402,F401\n")
    p = lint_imports(tmp_path, tmp_path / "src")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "layers: each imports only from the layers below it BROKEN" in out
    assert "diffmem.metrics.similarity -> diffmem.stages.verdict" in out, out


def test_every_rule_goes_to_its_code_in_one_hop():
    """rules/<file>.smk: rule R → workflow/scripts/R.py → diffmem.stages.<file>.R_stage, and the
    script calls that one library function (besides the runner's log glue)."""
    import ast
    import re

    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.M):
            script = re.search(r'script:\s*\n\s*"\.\./workflow/scripts/(\w+)\.py"', body)
            assert script, f"{smk.name}: rule {name} has no script"
            rules[name] = (smk.stem, script.group(1))
    rules.pop("all", None)
    assert len(rules) == 30 and len(set(s for _, s in rules.values())) == 30
    for name, (stem, script) in rules.items():
        assert script == name, f"rule {name} runs {script}.py"
        tree = ast.parse((ROOT / f"workflow/scripts/{script}.py").read_text())
        imports = {(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom)
                   for a in n.names}
        assert imports == {(f"diffmem.stages.{stem}", f"{name}_stage"),
                           ("diffmem.stages.runner", "logged")}, (name, imports)
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name)} - {"logged", "print", "float", "int", "list",
                                                      "bool", "str", "dict"}
        assert calls == {f"{name}_stage"}, (name, calls)
