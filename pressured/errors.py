"""One exception tree for pressured, and the one "did you mean" for mistyped names.

    PressuredError                  base of everything pressured raises on purpose
    ├── ConfigError                 bad configuration: names the key path and the value
    ├── CgroupError                 a cgroup path that is not usable (missing, no memory controller)
    │   └── CgroupFileError         a cgroup/proc file missing or malformed: names the file
    ├── KernelFeatureError          the kernel lacks something (no PSI, no tracepoint, no tracefs)
    ├── ActionError                 an action failed at run time (the daemon goes on)
    ├── StorageError                a storage backend could not write, read or list a key
    ├── KubernetesError             the API server or kubelet refused or answered garbage
    ├── LuaError                    a Lua script failed to load or run (names script and line)
    ├── PprofError                  a profile that cannot be parsed
    └── HttpGetError                an HTTP transfer failed or broke a limit: names the method,
                                    the URL and what was exceeded (subclasses in pressured.httpget)

Low-level calls into the native core raise OSError (errno, message naming the syscall and the
path); callers that own a path translate it into the tree above with ``raise X from exc``.
Foreign errors (boto3, httpx, lupa, lightkube) are translated where they are caught.
A plugin that cannot be loaded is not an error: it is skipped with a warning naming it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(word: str, known: Iterable[str]) -> str | None:
    """The one "did you mean": the closest of ``known`` to a mistyped ``word``, or None."""
    match = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``known``, or '' when nothing is close."""
    match = suggest(word, known)
    return f" (did you mean {match!r}?)" if match else ""


class PressuredError(Exception):
    """Base of every error pressured raises on purpose."""


class ConfigError(PressuredError):
    """Invalid configuration. ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class CgroupError(PressuredError):
    """A cgroup that cannot be watched."""


class CgroupFileError(CgroupError):
    """A cgroup or proc file that is missing or malformed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class KernelFeatureError(PressuredError):
    """The running kernel does not offer a feature."""


class ActionError(PressuredError):
    """An action failed at run time."""


class StorageError(PressuredError):
    """A storage backend failed."""


class KubernetesError(PressuredError):
    """The Kubernetes API server or kubelet failed or answered something unusable."""


class LuaError(PressuredError):
    """A Lua script failed to load or run."""


class PprofError(PressuredError):
    """A pprof profile that cannot be parsed."""


class HttpGetError(PressuredError):
    """An HTTP transfer (pressured.httpget) that failed or broke one of its limits."""

    def __init__(self, method: str, url: str, detail: str, *, status: int | None = None) -> None:
        self.method = method
        self.url = url
        self.detail = detail
        self.status = status
        """The reply's status when one came, else None."""
        super().__init__(f"{method} {url}: {detail}")
