"""The one toolkit configuration is checked with: a Checker that collects every problem.

Each problem names the key path (``where``, such as ``kills.kmsg.path``), what was expected
and the bad value, quoted briefly (errors.quote), with "did you mean" for a mistyped name
(errors.suggest). The wording follows one rule:

    where: expected <kind> (got <value>)        the value is of the wrong kind
    where: must be <constraint> (got <value>)   the right kind, outside what is accepted
    where: expected <thing> (got <value>)       any failure, when the owner names the thing
                                                (``expected="a port number 0-65535"``)
    where.key: unknown key (did you mean 'x'?)  or "(known: a, b)" when no name is close
    where: not a duration: <value> (...)        text that does not parse (durations, signals)

A Checker shows the bad value in one of two forms, its owner's: ``(got V)`` (PAREN: the
sections thresholds, rules, kills, metrics, storage, plugins.lua) or ``, got V`` (COMMA: the
top-level keys of pressured.config, followed by where the value came from, and the actions'
options). A check that fails records its problem and returns its ``default``, so the owner goes
on and reports every problem at once with ``raise_if_any()``.

Numbers: a boolean is never a number, NaN and infinity never pass, and an integer too large for
a float is not a number where a float is wanted (``integer=False``). A range names the bound the
value broke: "must be at least 10", "must be above 0", "must be at most 3600000".
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal as _signal
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar, overload

from pressured.errors import QUOTE_LIMIT, ConfigError, quote, suggest

__all__ = [
    "COMMA",
    "FALSE_WORDS",
    "PAREN",
    "TRUE_WORDS",
    "Checker",
    "hint",
    "parse_duration",
    "parse_signal",
    "shown",
]

PAREN: Final = " (got {})"
"""How a section's problem shows the bad value: ``kills.window_seconds: ... (got 0)``."""
COMMA: Final = ", got {}"
"""How the top level and the actions show it: ``source.mode: must be one of ..., got 'x'``."""

TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})
"""Text taken for a boolean where values may arrive as text (``from_text=True``)."""

_UNSIGNED: Final = re.compile(r"\d+")
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_D = TypeVar("_D")


def shown(key: Any) -> str:
    """A key as a problem names it: whole when it is text of a sane length, else quoted and
    cut (a key can be a YAML alias bomb too)."""
    return key if isinstance(key, str) and len(key) <= QUOTE_LIMIT else quote(key)


def hint(word: Any, known: Collection[str], prefix: str = "") -> str:
    """' (did you mean 'prefix.name'?)' for the closest of ``known`` to ``word``, or '' when
    nothing is close, or when ``word`` is not text or longer than any name can be."""
    if not isinstance(word, str) or len(word) > QUOTE_LIMIT:
        return ""
    match = suggest(word, known)
    return f" (did you mean {prefix + match!r}?)" if match else ""


def _bound(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if isinstance(value, int) else f"{value:g}"


def _out_of_range(
    value: float, least: float | None, most: float | None, above: float | None
) -> str | None:
    """The bound ``value`` broke, worded, or None."""
    if above is not None and not value > above:
        return f"must be above {_bound(above)}"
    if least is not None and value < least:
        return f"must be at least {_bound(least)}"
    if most is not None and value > most:
        return f"must be at most {_bound(most)}"
    return None


def _as_number(value: Any, *, integer: bool, from_text: bool) -> float | int | None:
    """``value`` as a finite float (or an int with ``integer``), or None when it is not one."""
    if from_text and isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:  # not a number, or more digits than int() converts
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if integer:
        return value if isinstance(value, int) else None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _as_seconds(value: Any) -> float | None:
    """Seconds from a number, or from text: bare seconds ("90", "1.5") or Go durations
    ("1m30s", "500ms", "2h"); None when ``value`` is neither, or not finite."""
    if not isinstance(value, str):
        return _as_number(value, integer=False, from_text=False)
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) else None
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text or not math.isfinite(total):
        return None
    return total


class Checker:
    """Collects the problems of one configuration, or of one section of it.

    ``got`` is how problems show the bad value (PAREN or COMMA); ``origin(where)`` says where
    the value at ``where`` came from ("file:/etc/pressured.yaml"), or None to say nothing: it
    is shown as ``(from ...)`` after the value.
    """

    def __init__(
        self, *, got: str = PAREN, origin: Callable[[str], str | None] | None = None
    ) -> None:
        self.problems: list[str] = []
        self._got = got
        self._origin = origin

    # --- recording

    def add(self, problem: str) -> None:
        """A problem the owner words itself (a rule across keys: "a is above b")."""
        self.problems.append(problem)

    def bad(self, where: str, expected: str, value: Any, *, hint: str = "") -> None:
        """``where: expected`` followed by the bad value, where it came from and ``hint``."""
        line = f"{where}: {expected}{self._got.format(quote(value))}"
        origin = self._origin(where) if self._origin is not None else None
        if origin:
            line += f" (from {origin})"
        self.problems.append(line + hint)

    def raise_if_any(self) -> None:
        """One ConfigError holding every problem recorded, if there is any."""
        if self.problems:
            raise ConfigError(self.problems)

    # --- shapes

    def unknown(self, where: str, key: Any, known: Collection[str], *, noun: str = "key") -> None:
        """``where.key`` is not one of ``known``: suggest the closest, else list them."""
        close = hint(key, known)
        listed = close or f" (known: {', '.join(sorted(known))})"
        self.add(f"{where}.{shown(key)}: unknown {noun}{listed}")

    def section(
        self, value: Any, where: str, known: Collection[str], *, noun: str = "key"
    ) -> Mapping[str, Any]:
        """A mapping whose keys are all in ``known`` (None: an empty section). A problem for
        a value that is not a mapping (then {}) and for each unknown key."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.bad(where, "expected a mapping", value)
            return {}
        for key in value:
            if key not in known:
                self.unknown(where, key, known, noun=noun)
        return value

    def kind(
        self,
        value: Any,
        where: str,
        kinds: type | tuple[type, ...],
        default: Any = None,
        *,
        nullable: bool = False,
    ) -> Any:
        """A value of one of the Python types ``kinds`` ("expected str or list"); a boolean is
        an int only where ``bool`` is named."""
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if value is None and nullable:
            return default
        if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
            return value
        self.bad(where, "expected " + " or ".join(k.__name__ for k in kinds), value)
        return default

    # --- values

    def flag(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        from_text: bool = False,
        nullable: bool = False,
    ) -> bool | _D:
        """True or false; with ``from_text`` also the words of TRUE_WORDS and FALSE_WORDS."""
        if value is None and nullable:
            return default
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            word = value.strip().lower()
            if word in TRUE_WORDS | FALSE_WORDS:
                return word in TRUE_WORDS
        self.bad(where, "expected true or false", value)
        return default

    def text(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        empty: bool = True,
        nullable: bool = False,
        expected: str | None = None,
    ) -> str | _D:
        """A string; with ``empty=False`` one with more than blanks in it."""
        if value is None and nullable:
            return default
        if not isinstance(value, str):
            problem = "expected a string"
        elif not empty and not value.strip():
            problem = "must be a non-empty string"
        else:
            return value
        self.bad(where, f"expected {expected}" if expected else problem, value)
        return default

    def path(self, value: Any, where: str, default: _D, *, nullable: bool = False) -> str | _D:
        """An absolute path."""
        if value is None and nullable:
            return default
        if not isinstance(value, str):
            problem = "expected an absolute path"
        elif not os.path.isabs(value):
            problem = "must be an absolute path"
        else:
            return value
        self.bad(where, problem, value)
        return default

    @overload
    def number(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        integer: Literal[True],
        from_text: bool = False,
        nullable: bool = False,
        expected: str | None = None,
    ) -> int | _D: ...

    @overload
    def number(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        integer: Literal[False] = False,
        from_text: bool = False,
        nullable: bool = False,
        expected: str | None = None,
    ) -> float | _D: ...

    @overload
    def number(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        integer: bool,
        from_text: bool = False,
        nullable: bool = False,
        expected: str | None = None,
    ) -> float | _D: ...

    def number(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        integer: bool = False,
        from_text: bool = False,
        nullable: bool = False,
        expected: str | None = None,
    ) -> float | _D:
        """A finite number (a float; an int with ``integer``) within ``min``/``above`` (the
        lowest allowed, or the value it must exceed) and ``max``, all inclusive but ``above``.
        With ``from_text`` also its text ("9100", " 2.5 "), for values that arrive as text."""
        if value is None and nullable:
            return default
        number = _as_number(value, integer=integer, from_text=from_text)
        if number is None:
            self.bad(
                where, f"expected {expected or ('an integer' if integer else 'a number')}", value
            )
            return default
        problem = _out_of_range(number, min, max, above)
        if problem is not None:
            self.bad(where, f"expected {expected}" if expected else problem, value)
            return default
        return number

    def duration(
        self,
        value: Any,
        where: str,
        default: _D,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> float | _D:
        """Seconds: a number, or text in seconds ("90") or Go's form ("1m30s", "500ms")."""
        seconds = _as_seconds(value)
        if seconds is None:
            self.add(f"{where}: not a duration: {quote(value)} (use seconds or Go form like 1m30s)")
            return default
        problem = _out_of_range(seconds, min, max, None)
        if problem is not None:
            self.bad(where, problem, value)
            return default
        return seconds

    def choice(
        self,
        value: Any,
        where: str,
        options: Sequence[str],
        default: _D,
        *,
        fold_case: bool = False,
    ) -> str | _D:
        """One of ``options`` (in any case with ``fold_case``); the value is returned as given."""
        word = value.lower() if isinstance(value, str) else value
        if (word if fold_case else value) in options:
            return str(value)
        self.bad(where, f"must be one of {', '.join(options)}", value, hint=hint(word, options))
        return default

    def signal(self, value: Any, where: str, default: _D) -> int | _D:
        """A signal by name (SIGUSR1, usr1) or number (10, or "10" from text)."""
        if isinstance(value, str) and _UNSIGNED.fullmatch(value.strip()):
            with contextlib.suppress(ValueError):  # more digits than int() converts
                value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return int(_signal.Signals(value))
            except ValueError:
                self.add(f"{where}: no such signal number: {quote(value)}")
                return default
        if isinstance(value, str):
            name = value.strip().upper()
            if not name.startswith("SIG"):
                name = "SIG" + name
            try:
                return int(_signal.Signals[name])
            except KeyError:
                pass
        self.add(f"{where}: not a signal name: {quote(value)} (e.g. SIGUSR1)")
        return default


def parse_duration(text: str, where: str) -> float:
    """Go durations ("1m30s", "500ms", "2h") or bare seconds ("90", "1.5"); ConfigError else."""
    check = Checker()
    seconds = check.duration(text, where, 0.0)
    check.raise_if_any()
    return seconds


def parse_signal(value: Any, where: str) -> int:
    """A signal by name (SIGUSR1, USR1) or number (10, or "10" from the environment);
    ConfigError else."""
    check = Checker()
    number = check.signal(value, where, 0)
    check.raise_if_any()
    return number
