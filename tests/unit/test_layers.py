"""test_layers.py — the house rule (docs/DESIGN.md, "Layers"): the
dependencies between shmlog's layers point one way, no module imports
another that imports it back, nothing inside the package imports the public
facade, and every module imports on its own in a fresh interpreter.

The contracts themselves are in pyproject.toml ([tool.importlinter]); this
runs them with import-linter (grimp reads every import statement, the ones
inside functions too) and adds the checks import-linter has no contract for.
Each check is shown failing on a planted forbidden import, so none of them
can pass by not looking.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys

import grimp
import pytest

import shmlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
PACKAGE = os.path.dirname(shmlog.__file__)


def _modules(package_dir: str) -> list[str]:
    out = []
    for d, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(package_dir))[: -len(".py")]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out.append(".".join(parts))
    return sorted(out)


def _lint(package_parent: str) -> tuple[int, str]:
    """import-linter's verdict on the package found under package_parent."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command as c; c()",
            "--config",
            PYPROJECT,
            "--no-cache",
        ],
        cwd=package_parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": package_parent},
    )
    return r.returncode, r.stdout + r.stderr


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("shmlog")


@pytest.fixture
def planted(tmp_path):
    """A copy of the package source to plant forbidden imports in."""
    dst = tmp_path / "shmlog"
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return tmp_path, dst


def test_the_import_linter_contracts_are_kept():
    rc, out = _lint(os.path.dirname(PACKAGE))
    assert rc == 0, out
    assert "2 kept, 0 broken" in out, out


def test_a_forbidden_import_breaks_a_contract_even_inside_a_function(planted):
    parent, pkg = planted
    # the control plane reaching up into a daemon, lazily: the cycle issue 16 found
    with open(pkg / "control" / "plane.py", "a") as f:
        f.write("\n\ndef _sneaky():\n    from ..service import supervisor  # noqa: F401\n")
    rc, out = _lint(str(parent))
    assert rc != 0 and "shmlog.control.plane -> shmlog.service.supervisor" in out, out


def test_a_primitive_that_imports_a_layer_breaks_a_contract(planted):
    parent, pkg = planted
    with open(pkg / "config.py", "a") as f:
        f.write("\nfrom .storage import layout  # noqa: E402,F401\n")
    rc, out = _lint(str(parent))
    assert rc != 0 and "shmlog.config is not allowed to import shmlog.storage" in out, out


def test_no_module_imports_one_that_imports_it_back(graph):
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_cycle(planted):
    parent, pkg = planted
    with open(pkg / "storage" / "layout.py", "a") as f:
        f.write("\nfrom . import recovery  # noqa: E402,F401\n")
    # the planted copy is analysed in its own interpreter (this one has shmlog imported)
    code = (
        "import json, grimp\n"
        + inspect.getsource(_cycles)
        + "print(json.dumps(_cycles(grimp.build_graph('shmlog', cache_dir=None))))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(parent)},
    )
    assert r.returncode == 0, r.stderr
    cycles = json.loads(r.stdout)
    assert any("shmlog.storage.layout" in c and "shmlog.storage.recovery" in c for c in cycles), cycles


def test_nothing_inside_the_package_imports_its_public_facade(graph):
    """shmlog/__init__.py names the API for users; a module that imported it
    would depend on every layer at once (the old 8-module cycle ran through it)."""
    importers = sorted(m for m in graph.find_modules_that_directly_import("shmlog") if m != "shmlog.aio")
    assert importers == [], importers


@pytest.mark.parametrize("module", _modules(PACKAGE))
def test_every_module_imports_on_its_own(module, tmp_path):
    """In a fresh interpreter, from a directory with no source tree in it."""
    code = (
        f"import {module}" if module != "shmlog.__main__" else "import importlib; importlib.import_module('shmlog.cli')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_layers_contract_names_every_subpackage():
    """A new subpackage must be placed in a layer, or the rule silently skips it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    with open(PYPROJECT, "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    named = {m.strip() for c in contracts if c["type"] == "layers" for layer in c["layers"] for m in layer.split("|")}
    subpackages = {
        f"shmlog.{d}" for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py"))
    }
    assert subpackages == named, (subpackages - named, named - subpackages)
