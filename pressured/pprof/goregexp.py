"""Go's regexp for the expressions a profile carries, through RE2: matching is linear in time.

    rx = compile_go(drop_frames, "drop_frames", source, whole=True)  # PprofError if rejected
    rx.matches("runtime.mallocgc")                                     # Go's MatchString

A profile's drop_frames and keep_frames are written by whoever serves the profile, so they are
hostile input: with a backtracking engine (Python's ``re``) a pattern such as
``(a|aa)+$x|(a|a)*b`` takes minutes on a 35-character function name, holding the GIL. Go's
regexp package implements RE2's syntax and its automata, so google-re2 (module ``re2``) gives
the same answers as ``go tool pprof`` in time linear in the name, and rejects what Go rejects:
backreferences, look-around, repeat counts over 1000 (also nested ones).

Known differences, both only in what is rejected: RE2 accepts ``\\C`` (any byte), which Go
refuses, so it is refused here too; and RE2 refuses a program larger than its memory budget
(8 MiB) where Go's limit is higher. Either way the caller sees a PprofError.

The ``re2`` module is imported on first use (it is part of the ``pprof`` extra).
"""

from __future__ import annotations

from typing import Any

from pressured.errors import PprofError

EXCERPT_CHARS = 40
"""How much of a rejected pattern an error message quotes."""


def excerpt(pattern: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, quoted prefix of ``pattern`` for messages (a pattern may be megabytes long)."""
    if len(pattern) <= limit:
        return repr(pattern)
    return repr(pattern[:limit]) + f"... ({len(pattern)} chars)"


def _printable(text: str, limit: int) -> str:
    # RE2's reasons quote the rest of the pattern from where it failed: cut and escape that too
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


class GoRegexp:
    """One compiled expression; ``matches`` is Go's ``(*Regexp).MatchString`` (unanchored)."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, rx: Any, pattern: str) -> None:
        self._rx = rx
        self.pattern = pattern

    def matches(self, text: str) -> bool:
        return self._rx.search(text) is not None


def compile_go(pattern: str, field: str, source: str, *, whole: bool = False) -> GoRegexp:
    """``pattern`` compiled with Go's syntax and RE2's engine.

    ``whole``: compile ``"^(" + pattern + ")$"``, as pprof does with drop_frames and keep_frames
    (textually, so a pattern may close that group: Go's answer is what counts). A pattern Go's
    regexp would reject raises PprofError naming ``source``, ``field`` and a short prefix of the
    pattern.
    """
    import re2  # noqa: PLC0415 - the extra's native module, only when a profile has a pattern

    reason = _go_only_rejection(pattern)
    rx = None
    if reason is None:
        options = re2.Options()
        options.log_errors = False  # RE2 would print each rejection on stderr
        options.never_capture = True  # only "does it match" is asked: no submatch bookkeeping
        try:
            rx = re2.compile(f"^({pattern})$" if whole else pattern, options)
        except re2.error as exc:
            reason = _reason(exc)
    if rx is None:
        raise PprofError(
            f"{source}: profile field {field} is not a valid regular expression "
            f"({reason}): {excerpt(pattern)}"
        )
    return GoRegexp(rx, pattern)


def _reason(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return _printable(text, 2 * EXCERPT_CHARS)


def _go_only_rejection(pattern: str) -> str | None:
    # Go refuses the escape \C (one byte, which could split a UTF-8 sequence); RE2 accepts it.
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "\\":
            i += 1
            continue
        nxt = pattern[i + 1 : i + 2]
        if nxt == "C":
            return "invalid escape sequence: \\C"
        if nxt == "Q":  # \Q...\E quotes literally, backslashes included
            end = pattern.find("\\E", i + 2)
            if end < 0:
                return None
            i = end + 2
            continue
        i += 2
    return None
