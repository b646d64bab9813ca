"""test_tidy.py — the code's own properties, checked like any behaviour
(TigerBeetle's tidy): ruff's lint rules and its formatting (pyproject.toml
[tool.ruff]) hold over shmlog/, tests/, tools/ and benchmarks/, and mypy
([tool.mypy]) is clean on the package.

Owns: running the linter, the format check and the type checker as part of
the suite, so CI refuses a change that breaks one. Must never: change a file (check only)."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ruff_lint_is_clean():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--output-format",
            "concise",
            "shmlog",
            "tests",
            "tools",
            "benchmarks",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "shmlog", "tests", "tools", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr + "\n(run `make format`)"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e '.[test]')")
def test_mypy_is_clean():
    """The package type-checks; the public API is fully annotated (pyproject.toml [tool.mypy] overrides)."""
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_public_exception_is_exported_from_shmlog():
    """errors.__all__ names every exception errors.py defines, and `from shmlog import X` works for each."""
    import inspect

    import shmlog
    from shmlog import errors

    defined = {
        n
        for n, o in vars(errors).items()
        if inspect.isclass(o)
        and issubclass(o, BaseException)
        and o.__module__ == errors.__name__
        and not n.startswith("_")
    }
    assert defined == set(errors.__all__)
    assert all(getattr(shmlog, n) is getattr(errors, n) for n in defined)
    assert defined <= set(shmlog.__all__)
