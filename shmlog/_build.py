"""_build.py — the cffi (API mode) build of the C core in csrc/.

Owns: turning csrc/shmlog.h into the cdef (the text between the CDEF
markers, so C and Python cannot drift) and compiling csrc/*.c into the
extension module shmlog._shmlog_c. Must never: be imported at run time;
setup.py runs it through cffi_modules.
"""

import os
import pathlib
import re

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
# setuptools wants source paths relative to the project root (setup.py's directory)
CSRC_REL = os.path.relpath(CSRC, os.getcwd())
SOURCES = ["crc32c.c", "batch.c", "shm.c", "ring.c", "log.c", "control.c", "layout.c", "accum.c"]


def cdef_text() -> str:
    header = (CSRC / "shmlog.h").read_text()
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S)
    if not m:
        raise RuntimeError("csrc/shmlog.h lacks the CDEF markers")
    return m.group(1)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
# Express tier: cffi wraps every call in Py_BEGIN/END_ALLOW_THREADS and saves
# and restores errno (~60 ns of a ~130 ns call here). Functions named shmx_*
# never block and never report through errno, so for them both are skipped:
# the wrappers cffi generates are named _cffi_f_<function>, and the test below
# folds to a constant per wrapper. Any other function keeps cffi's behaviour.
# If a cffi release shapes its wrappers differently, express calls simply
# become ordinary calls (slower, still correct).
PREAMBLE = r"""
#include "shmlog.h"
#define SHM_EXPRESS (__builtin_strncmp(__func__, "_cffi_f_shmx_", 13) == 0)
static inline void shm_cffi_restore_errno(void) { _cffi_restore_errno(); }
static inline void shm_cffi_save_errno(void) { _cffi_save_errno(); }
#undef _cffi_restore_errno
#undef _cffi_save_errno
#define _cffi_restore_errno() do { if (!SHM_EXPRESS) shm_cffi_restore_errno(); } while (0)
#define _cffi_save_errno() do { if (!SHM_EXPRESS) shm_cffi_save_errno(); } while (0)
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS { PyThreadState *_save = SHM_EXPRESS ? NULL : PyEval_SaveThread();
#define Py_END_ALLOW_THREADS if (_save) PyEval_RestoreThread(_save); }
"""


def build_flags() -> tuple[list[str], list[str]]:
    """(compile args, link args) for every C extension of shmlog (setup.py
    uses these for shmlog._fastpath too). SHMLOG_SANITIZE=1 builds with
    AddressSanitizer and UndefinedBehaviorSanitizer (run Python with the ASan
    runtime preloaded: `make sanitize`, CONTRIBUTING.md); SHMLOG_DEBUG=1
    builds -O0 -g. The default is -O2."""
    warn = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
    if os.uname().machine in ("x86_64", "amd64"):
        warn.append("-mcx16")
    if os.environ.get("SHMLOG_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        return ["-O1", "-g"] + warn + san, san
    if os.environ.get("SHMLOG_DEBUG") == "1":
        return ["-O0", "-g"] + warn, []
    return ["-O2"] + warn, []


COMPILE_ARGS, LINK_ARGS = build_flags()
ffibuilder.set_source(
    "shmlog._shmlog_c",
    PREAMBLE,
    sources=[os.path.join(CSRC_REL, s) for s in SOURCES],
    include_dirs=[CSRC_REL],
    depends=[os.path.join(CSRC_REL, h) for h in ("shmlog.h", "atomics.h", "frame.h")],
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
