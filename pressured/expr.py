"""A small, safe expression language for ``rules.warning`` and ``rules.critical``.

User text is never handed to Python's ``eval``: it is tokenized and parsed here (a Pratt
parser) into a tree once, and the tree is compiled into nested closures that are evaluated
against a mapping of float variables on every sample.

Grammar, loosest binding first (C-like, so OOMHero rules read the same)::

    ||                      logical or (short-circuit)
    &&                      logical and (short-circuit)
    == !=                   equality          (not chainable: ``a == b == c`` is an error)
    < <= > >=               comparison        (not chainable: write ``a < b && b < c``)
    + -                     additive, left associative
    * / %                   multiplicative, left associative
    ! -  +                  prefix
    ^                       power, right associative: ``2^3^2`` is ``2^(3^2)``, ``-2^2`` is -4
    ( )  numbers  names     ``10``, ``2.5``, ``.5``, ``1e6``; names are ``[A-Za-z_][A-Za-z0-9_]*``

Values are floats. Comparisons and logical operators give 1.0 (true) or 0.0 (false); any
value other than 0.0 is true for ``!``, ``&&`` and ``||``.

Arithmetic never produces NaN, because a NaN would make every comparison false and ``!=``
true, which silently turns a rule off or on:

- ``x / 0`` is +inf or -inf by the sign of ``x`` (a rate over no time is unbounded, and a
  comparison such as ``x / 0 > 5`` still answers sensibly);
- results with no defined value (``0 / 0``, ``inf - inf``, ``0 * inf``, ``inf / inf``,
  ``x % 0``, ``inf % y``, a negative base to a fractional power) are 0.0;
- ``0 ^ -1`` is +inf, like a division by zero; overflow is +-inf;
- ``%`` is C's fmod: the sign of the result follows the dividend;
- a NaN passed in as a variable is read as 0.0.

The caller decides what an absent reading means before evaluating; the engine passes
``eta_seconds`` as +inf when memory is not growing (so ``eta_seconds < 120`` is false) and
absent PSI or scores as 0.0.

Errors are :class:`~pressured.errors.ConfigError` naming the key path, the 1-based position
and a caret line under the expression.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from pressured.errors import ConfigError, did_you_mean, quote

__all__ = ["BINARY_OPERATORS", "Binary", "Expr", "Node", "Num", "Unary", "Var", "compile_expr"]

MAX_LENGTH: Final = 4096
MAX_DEPTH: Final = 100
"""Limit on parenthesis nesting and on tree height; it keeps the recursive parser, the compiler
and the closure chain far below Python's recursion limit whatever the input."""

Evaluator = Callable[[Mapping[str, float]], float]


# --- arithmetic without NaN -------------------------------------------------------------------


def _clean(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _add(a: float, b: float) -> float:
    return _clean(a + b)


def _sub(a: float, b: float) -> float:
    return _clean(a - b)


def _mul(a: float, b: float) -> float:
    return _clean(a * b)


def _div(a: float, b: float) -> float:
    if b == 0.0:
        return 0.0 if a == 0.0 else math.copysign(math.inf, a)
    return _clean(a / b)


def _mod(a: float, b: float) -> float:
    if b == 0.0 or math.isinf(a):
        return 0.0
    return _clean(math.fmod(a, b))


def _is_odd_integer(x: float) -> bool:
    return math.isfinite(x) and x.is_integer() and int(x) % 2 == 1


def _pow(a: float, b: float) -> float:
    try:
        return _clean(math.pow(a, b))
    except OverflowError:
        return -math.inf if a < 0 and _is_odd_integer(b) else math.inf
    except ValueError:
        # math.pow raises ValueError for 0 ** negative (a pole) and for a negative base with
        # a fractional exponent (no real value).
        return math.inf if a == 0.0 else 0.0


def _eq(a: float, b: float) -> float:
    return 1.0 if a == b else 0.0


def _ne(a: float, b: float) -> float:
    return 1.0 if a != b else 0.0


def _lt(a: float, b: float) -> float:
    return 1.0 if a < b else 0.0


def _le(a: float, b: float) -> float:
    return 1.0 if a <= b else 0.0


def _gt(a: float, b: float) -> float:
    return 1.0 if a > b else 0.0


def _ge(a: float, b: float) -> float:
    return 1.0 if a >= b else 0.0


BINARY_OPERATORS: Final[Mapping[str, Callable[[float, float], float]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
    "^": _pow,
    "==": _eq,
    "!=": _ne,
    "<": _lt,
    "<=": _le,
    ">": _gt,
    ">=": _ge,
}
"""The non-short-circuit binary operators, as functions (``&&`` and ``||`` are special forms)."""

# Left binding powers. Prefix operators bind at _PREFIX_BP, looser than ``^`` so that ``-2^2``
# is -(2^2) as in mathematics.
_BINDING: Final[Mapping[str, int]] = {
    "||": 10,
    "&&": 20,
    "==": 30,
    "!=": 30,
    "<": 40,
    "<=": 40,
    ">": 40,
    ">=": 40,
    "+": 50,
    "-": 50,
    "*": 60,
    "/": 60,
    "%": 60,
    "^": 80,
}
_PREFIX_BP: Final = 70
_NON_CHAINING: Final = frozenset({30, 40})


# --- tree ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: float
    pos: int

    def __str__(self) -> str:
        if self.value.is_integer() and abs(self.value) < 1e15:
            return str(int(self.value))
        return repr(self.value)


@dataclass(frozen=True)
class Var:
    name: str
    pos: int

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Node
    pos: int

    def __str__(self) -> str:
        return f"({self.op}{self.operand})"


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node
    pos: int

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


Node = Num | Var | Unary | Binary


# --- tokens --------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_TAIL = re.compile(r"[A-Za-z0-9_.]*")
_TWO_CHAR: Final = frozenset({"&&", "||", "==", "!=", "<=", ">="})
_ONE_CHAR: Final = frozenset("!<>+-*/%^()")
_HINTS: Final[Mapping[str, str]] = {"&": "&&", "|": "||", "=": "=="}
_WORD_OPERATORS: Final[Mapping[str, str]] = {"and": "&&", "or": "||", "not": "!"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "name", "op", "end"
    text: str
    pos: int
    value: float = 0.0


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of expression"
    return f"token {tok.text!r}"


def _unexpected(tok: _Token) -> str:
    if tok.kind == "name" and tok.text in _WORD_OPERATORS:
        return f"unexpected {_describe(tok)} (use {_WORD_OPERATORS[tok.text]!r})"
    return f"unexpected {_describe(tok)}"


class _Failure(Exception):
    """Internal: a parse error at a position, turned into a ConfigError by compile_expr."""

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            assert m is not None  # the first character guarantees a match
            end = m.end()
            tail = _WORD_TAIL.match(text, end)
            if tail is not None and tail.end() > end:
                word = text[i : tail.end()]
                raise _Failure(i, f"malformed number {word!r} (unit suffixes are not supported)")
            tokens.append(_Token("num", m.group(), i, float(m.group())))
            i = end
            continue
        if c.isalpha() or c == "_":
            m = _NAME.match(text, i)
            assert m is not None
            tokens.append(_Token("name", m.group(), i))
            i = m.end()
            continue
        pair = text[i : i + 2]
        if pair in _TWO_CHAR:
            tokens.append(_Token("op", pair, i))
            i += 2
            continue
        if c in _ONE_CHAR:
            tokens.append(_Token("op", c, i))
            i += 1
            continue
        hint = f" (did you mean {_HINTS[c]!r}?)" if c in _HINTS else ""
        raise _Failure(i, f"unexpected character {c!r}{hint}")
    tokens.append(_Token("end", "", n))
    return tokens


# --- parser --------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token], known: frozenset[str] | None) -> None:
        self.tokens = tokens
        self.i = 0
        self.known = known
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise _Failure(0, "empty expression")
        node, _height = self.expression(0)
        tok = self.peek()
        if tok.kind != "end":
            raise _Failure(tok.pos, _unexpected(tok))
        return node

    def expression(self, rbp: int) -> tuple[Node, int]:
        """The longest expression whose operators bind tighter than ``rbp``, and its height."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Failure(self.peek().pos, f"expression nested deeper than {MAX_DEPTH} levels")
        left, height = self.prefix(self.take())
        while True:
            tok = self.peek()
            lbp = _BINDING.get(tok.text, -1) if tok.kind == "op" else -1
            if lbp <= rbp:
                break
            self.take()
            # ``^`` is right associative: its right operand may itself contain ``^``.
            right, right_height = self.expression(lbp - 1 if tok.text == "^" else lbp)
            left = Binary(tok.text, left, right, tok.pos)
            # A long flat chain (1+1+...+1) is shallow to parse but deep as a tree, and the
            # compiled closures recurse once per level.
            height = max(height, right_height) + 1
            if height > MAX_DEPTH:
                raise _Failure(tok.pos, f"expression nested deeper than {MAX_DEPTH} levels")
            if lbp in _NON_CHAINING:
                after = self.peek()
                if after.kind == "op" and _BINDING.get(after.text) == lbp:
                    raise _Failure(
                        after.pos,
                        f"comparisons cannot be chained: {tok.text!r} then {after.text!r} "
                        "(join them with &&)",
                    )
        self.depth -= 1
        return left, height

    def prefix(self, tok: _Token) -> tuple[Node, int]:
        if tok.kind == "num":
            return Num(tok.value, tok.pos), 1
        if tok.kind == "name":
            self.check_name(tok)
            return Var(tok.text, tok.pos), 1
        if tok.kind == "op" and tok.text == "(":
            inner = self.expression(0)
            close = self.peek()
            if close.kind != "op" or close.text != ")":
                raise _Failure(close.pos, f"expected ')' but found {_describe(close)}")
            self.take()
            return inner
        if tok.kind == "op" and tok.text in ("!", "-", "+"):
            operand, height = self.expression(_PREFIX_BP)
            if tok.text == "+":
                return operand, height
            if height + 1 > MAX_DEPTH:
                raise _Failure(tok.pos, f"expression nested deeper than {MAX_DEPTH} levels")
            return Unary(tok.text, operand, tok.pos), height + 1
        raise _Failure(tok.pos, _unexpected(tok))

    def check_name(self, tok: _Token) -> None:
        if self.known is None or tok.text in self.known:
            return
        if tok.text in _WORD_OPERATORS:
            hint = f" (use {_WORD_OPERATORS[tok.text]!r})"
        else:
            hint = did_you_mean(tok.text, self.known)
        raise _Failure(tok.pos, f"unknown variable {tok.text!r}{hint}")


# --- compilation to closures ---------------------------------------------------------------


def _compile(node: Node) -> Evaluator:
    if isinstance(node, Num):
        value = node.value
        return lambda _v: value
    if isinstance(node, Var):
        name = node.name

        def var(v: Mapping[str, float]) -> float:
            x = float(v[name])
            return 0.0 if math.isnan(x) else x

        return var
    if isinstance(node, Unary):
        operand = _compile(node.operand)
        if node.op == "!":
            return lambda v: 1.0 if operand(v) == 0.0 else 0.0
        return lambda v: -operand(v)
    left = _compile(node.left)
    right = _compile(node.right)
    if node.op == "&&":
        return lambda v: 1.0 if left(v) != 0.0 and right(v) != 0.0 else 0.0
    if node.op == "||":
        return lambda v: 1.0 if left(v) != 0.0 or right(v) != 0.0 else 0.0
    fn = BINARY_OPERATORS[node.op]
    return lambda v: fn(left(v), right(v))


def _names(node: Node) -> set[str]:
    if isinstance(node, Num):
        return set()
    if isinstance(node, Var):
        return {node.name}
    if isinstance(node, Unary):
        return _names(node.operand)
    return _names(node.left) | _names(node.right)


@dataclass(frozen=True)
class Expr:
    """A compiled expression. ``str(expr)`` is the fully parenthesized form."""

    text: str
    where: str
    tree: Node
    names: frozenset[str]
    _fn: Evaluator = field(repr=False, compare=False)

    def evaluate(self, variables: Mapping[str, float]) -> float:
        """The value under ``variables``; a name missing from them raises KeyError."""
        return self._fn(variables)

    def matches(self, variables: Mapping[str, float]) -> bool:
        """A rule matches when its value is at least 1 (so a bare comparison matches when true)."""
        return self._fn(variables) >= 1.0

    def __str__(self) -> str:
        return str(self.tree)


def _error(text: str, where: str, pos: int, message: str) -> ConfigError:
    # Tabs and newlines would break the caret's alignment; show them as single spaces.
    shown = "".join(" " if ch.isspace() else ch for ch in text)
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}{message} at position {pos + 1}\n  {shown}\n  {' ' * pos}^")


def compile_expr(text: str, where: str, known: Collection[str] | None = None) -> Expr:
    """Parse ``text`` once. ``where`` is the key path named in errors (``rules.critical``);
    when ``known`` is given, any other variable name is an error here rather than at run time.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected an expression string (got {quote(text)})")
    if len(text) > MAX_LENGTH:
        raise ConfigError(
            f"{where}: expression longer than {MAX_LENGTH} characters (got {len(text)})"
        )
    known_set = None if known is None else frozenset(known)
    try:
        tree = _Parser(_tokenize(text), known_set).parse()
    except _Failure as exc:
        raise _error(text, where, exc.pos, exc.message) from None
    return Expr(text, where, tree, frozenset(_names(tree)), _compile(tree))
