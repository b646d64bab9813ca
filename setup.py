"""setup.py — builds shmlog: its cffi (API mode) C core from csrc/ (shmlog._shmlog_c,
see shmlog/_build.py) and the CPython-API fast path csrc/fastpath.c (shmlog._fastpath),
which links no copy of the core: shmlog._native binds it to the cffi module's functions.
Both take their flags from _build.build_flags (SHMLOG_SANITIZE=1, SHMLOG_DEBUG=1)."""
import importlib.util
import pathlib

from setuptools import Extension, setup

# by path, not `import shmlog._build`: importing the package needs the built core
_spec = importlib.util.spec_from_file_location("shmlog_build", pathlib.Path(__file__).parent / "shmlog" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

fastpath = Extension("shmlog._fastpath", sources=["csrc/fastpath.c", "csrc/pyrecords.c"], include_dirs=["csrc"],
                     depends=["csrc/shmlog.h", "csrc/fastpath.h"],
                     extra_compile_args=_build.COMPILE_ARGS + ["-Wno-missing-field-initializers"],
                     extra_link_args=_build.LINK_ARGS)

setup(cffi_modules=["shmlog/_build.py:ffibuilder"], ext_modules=[fastpath])
