"""setup.py — builds shmlog: its cffi (API mode) C core from csrc/ (shmlog._shmlog_c,
see shmlog/_build.py) and the CPython-API fast path csrc/fastpath.c (shmlog._fastpath),
which links no copy of the core: shmlog._native binds it to the cffi module's functions."""
from setuptools import Extension, setup

fastpath = Extension("shmlog._fastpath", sources=["csrc/fastpath.c"], include_dirs=["csrc"],
                     depends=["csrc/shmlog.h"],
                     extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                         "-Wno-missing-field-initializers"])

setup(cffi_modules=["shmlog/_build.py:ffibuilder"], ext_modules=[fastpath])
