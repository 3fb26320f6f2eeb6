"""pressured: warns and acts before a container is OOM-killed, and confirms every real kill."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pressured")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
