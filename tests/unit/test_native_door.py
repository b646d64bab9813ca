"""test_native_door.py — one door to the C core (docs/DESIGN.md, "The boundary
between Python and C").

Only the modules in ALLOWED may use cffi's `ffi` or call `lib.<function>`;
every other module of shmlog/ may read constants (`lib.SHM_*`) only, and
reaches the core through functions and methods of the allowed modules. The
check is an AST walk over shmlog/; the last test shows it failing on a
planted violation.
"""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

PKG = pathlib.Path(__file__).resolve().parents[2] / "shmlog"

ALLOWED = frozenset(
    {
        "_native.py",  # the native binding
        # the data path's hot modules
        "client/producer.py",
        "client/consumer.py",
        "client/aio.py",
        "client/reader.py",
        "kafka/data.py",
        "service/persister.py",
        "storage/segment.py",
        "storage/writer.py",
        "storage/recovery.py",
        "storage/compact.py",
        # the control plane's shared-memory modules
        "control/plane.py",
        "control/ring_map.py",
        "control/tables.py",
        "control/transactions.py",
    }
)


def violations(source: str, filename: str = "<planted>") -> list[str]:
    """Where a module uses `ffi` or calls a `lib` function (not a lib.SHM_* constant)."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Name) and node.id == "ffi":
            out.append(f"{filename}:{node.lineno}: uses ffi")
        elif isinstance(node, ast.alias) and node.name == "ffi":
            out.append(f"{filename}:{node.lineno}: imports ffi")
        elif isinstance(node, ast.Attribute) and node.attr == "ffi":
            out.append(f"{filename}:{node.lineno}: uses ffi")
        elif isinstance(node, ast.Attribute) and _is_lib(node.value) and not node.attr.startswith("SHM_"):
            out.append(f"{filename}:{node.lineno}: lib.{node.attr}")
    return out


def _is_lib(node) -> bool:
    """`lib` or `<anything>.lib` (e.g. `_native.lib`)."""
    return (isinstance(node, ast.Name) and node.id == "lib") or (isinstance(node, ast.Attribute) and node.attr == "lib")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel != "_build.py":  # build time only: it makes the module, it does not call it
            yield rel, path


def test_only_allowed_modules_touch_the_core():
    bad = []
    for rel, path in _modules():
        if rel not in ALLOWED:
            bad += violations(path.read_text(), rel)
    assert not bad, "use a function of an allowed module instead:\n" + "\n".join(bad)


def test_allow_list_names_real_modules():
    present = {rel for rel, _ in _modules()}
    missing = ALLOWED - present - {"client/reader.py"}  # being written on another branch
    assert not missing, missing


@pytest.mark.parametrize(
    "planted",
    [
        "from .._native import ffi\nx = ffi.new('int *')\n",
        "from .._native import lib\nlib.shm_ctl_unlock(base)\n",
        "from .. import _native\ng.generation = _native.lib.shm_now_ms()\n",
        "from .._native import lib\nf = lib.shm_group_changed\n",
    ],
)
def test_check_fails_on_a_planted_violation(planted):
    assert violations(planted)


def test_constants_pass():
    assert not violations("from .._native import lib\nN = lib.SHM_MEMBER_TOPICS\n")
