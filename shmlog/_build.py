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
SOURCES = ["crc32c.c", "batch.c", "shm.c", "ring.c", "control.c", "layout.c"]


def cdef_text() -> str:
    header = (CSRC / "shmlog.h").read_text()
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S)
    if not m:
        raise RuntimeError("csrc/shmlog.h lacks the CDEF markers")
    return m.group(1)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "shmlog._shmlog_c",
    '#include "shmlog.h"\n',
    sources=[os.path.join(CSRC_REL, s) for s in SOURCES],
    include_dirs=[CSRC_REL],
    depends=[os.path.join(CSRC_REL, h) for h in ("shmlog.h", "atomics.h")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing"]
    + (["-mcx16"] if os.uname().machine in ("x86_64", "amd64") else []),
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
