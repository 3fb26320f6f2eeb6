"""Only wiring: metadata lives in pyproject.toml; the native core is built by cffi."""

from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffi"])
