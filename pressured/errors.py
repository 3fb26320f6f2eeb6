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
from collections.abc import Iterable, Iterator
from typing import Any

QUOTE_LIMIT = 80
"""Characters of a bad value's repr that an error message shows."""
_QUOTE_COUNT = 1 << 16
"""How far past the shown prefix a repr is measured before it is only 'more than' this."""
_QUOTE_DEPTH = 32
_BRACKETS: dict[type, tuple[str, str]] = {dict: ("{", "}"), list: ("[", "]"), tuple: ("(", ")")}


def suggest(word: str, known: Iterable[str]) -> str | None:
    """The one "did you mean": the closest of ``known`` to a mistyped ``word``, or None."""
    match = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``known``, or '' when nothing is close."""
    match = suggest(word, known)
    return f" (did you mean {match!r}?)" if match else ""


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message: as is when it has at most ``limit`` characters,
    else its first ``limit`` characters, an ellipsis and its total length.

    Never builds more than a bounded part of the repr: a config value can be a YAML alias
    bomb whose full repr has hundreds of megabytes, or nested thousands of levels deep."""
    shown: list[str] = []
    size = 0
    for piece in _repr_pieces(value, set(), 0):
        if size < limit:
            shown.append(piece[: limit - size])
        size += len(piece)
        if size > limit + _QUOTE_COUNT:
            return f"{''.join(shown)}… (more than {limit + _QUOTE_COUNT} characters)"
    if size <= limit:
        return "".join(shown)
    return f"{''.join(shown)}… ({size} characters)"


def _repr_pieces(value: Any, active: set[int], depth: int) -> Iterator[str]:
    """repr(value) in pieces, for the plain types config files are made of; any other type
    is one piece (its own repr)."""
    kind = type(value)
    if kind in (dict, list, tuple):
        open_, close = _BRACKETS[kind]
        if id(value) in active or depth >= _QUOTE_DEPTH:
            yield f"{open_}...{close}"
            return
        active.add(id(value))
        yield open_
        items = value.items() if kind is dict else value
        for i, item in enumerate(items):
            if i:
                yield ", "
            if kind is dict:
                yield from _repr_pieces(item[0], active, depth + 1)
                yield ": "
                yield from _repr_pieces(item[1], active, depth + 1)
            else:
                yield from _repr_pieces(item, active, depth + 1)
        if kind is tuple and len(value) == 1:
            yield ","
        yield close
        active.discard(id(value))
    elif kind in (str, bytes) and len(value) > _QUOTE_COUNT:
        yield repr(value[: _QUOTE_COUNT + 1])  # long enough to say "more than"
    elif kind is int:
        try:
            yield repr(value)
        except ValueError:  # more digits than int -> str allows (sys.get_int_max_str_digits)
            yield f"<an integer of {value.bit_length()} bits>"
    else:
        yield repr(value)


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
