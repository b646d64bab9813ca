"""setup.py — builds shmlog and its cffi (API mode) C core from csrc/."""
from setuptools import setup

setup(cffi_modules=["shmlog/_build.py:ffibuilder"])
