"""cffi builder for pressured._native (API mode, out-of-line).

setup.py wires it with cffi_modules=["csrc/build_native.py:ffi"]; the cdef lives in
native.cdef so the C surface is reviewed in one place.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["files.c", "notify.c", "perf.c"]

ffi = FFI()
ffi.cdef((HERE / "native.cdef").read_text())
ffi.set_source(
    "pressured._native",
    '#include "pressured_native.h"\n',
    sources=[f"csrc/{name}" for name in SOURCES],  # setuptools wants paths relative to setup.py
    include_dirs=["csrc"],
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
