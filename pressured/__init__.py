"""pressured: warns and acts before a container is OOM-killed, and confirms every real kill."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["__version__"]

if TYPE_CHECKING:
    __version__: str
else:

    def __getattr__(name: str) -> str:
        # read on first use: importlib.metadata (email, zipfile, csv, ...) costs ~2 MiB
        if name != "__version__":
            raise AttributeError(f"module 'pressured' has no attribute {name!r}")
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            found = version("pressured")
        except PackageNotFoundError:  # a source tree that was never installed
            found = "0.0.0+unknown"
        globals()["__version__"] = found
        return found
