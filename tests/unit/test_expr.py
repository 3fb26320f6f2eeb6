from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.errors import ConfigError
from pressured.expr import BINARY_OPERATORS, MAX_DEPTH, MAX_LENGTH, compile_expr


def value(text: str, **variables: float) -> float:
    return compile_expr(text, "rules.test", None).evaluate(variables)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("1 + 2 * 3", "(1 + (2 * 3))"),
        ("(1 + 2) * 3", "((1 + 2) * 3)"),
        ("1 - 2 - 3", "((1 - 2) - 3)"),
        ("8 / 4 / 2", "((8 / 4) / 2)"),
        ("2 ^ 3 ^ 2", "(2 ^ (3 ^ 2))"),
        ("-2 ^ 2", "(-(2 ^ 2))"),
        ("2 ^ -1", "(2 ^ (-1))"),
        ("-a * b", "((-a) * b)"),
        ("!a && b", "((!a) && b)"),
        ("a || b && c", "(a || (b && c))"),
        ("a && b || c", "((a && b) || c)"),
        ("a < b == c > d", "((a < b) == (c > d))"),
        ("a + 1 > b * 2 && c", "(((a + 1) > (b * 2)) && c)"),
        ("a % 3 + 1", "((a % 3) + 1)"),
        ("+a", "a"),
        ("1e6 + .5 + 2.", "((1000000 + 0.5) + 2)"),
        ("  memory_usage>70  ", "(memory_usage > 70)"),
    ],
)
def test_precedence_and_associativity(text: str, tree: str) -> None:
    assert str(compile_expr(text, "r", None)) == tree


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("2 ^ 3 ^ 2", 512.0),
        ("-2 ^ 2", -4.0),
        ("7 % 3", 1.0),
        ("-7 % 3", -1.0),  # fmod: the sign follows the dividend
        ("3 > 2", 1.0),
        ("3 < 2", 0.0),
        ("2 >= 2 && 2 <= 2", 1.0),
        ("1 == 1", 1.0),
        ("1 != 1", 0.0),
        ("!0", 1.0),
        ("!5", 0.0),
        ("0 || 0.5", 1.0),
        ("2 && 0", 0.0),
        # Division by zero is unbounded, never NaN: comparisons keep working.
        ("1 / 0", math.inf),
        ("-1 / 0", -math.inf),
        ("1 / 0 > 1e300", 1.0),
        ("0 / 0", 0.0),
        ("5 % 0", 0.0),
        ("0 ^ -1", math.inf),
        ("(-8) ^ 0.5", 0.0),
        ("10 ^ 400", math.inf),
        ("(-10) ^ 401", -math.inf),
        ("1 / 0 - 1 / 0", 0.0),
        ("0 * (1 / 0)", 0.0),
    ],
)
def test_evaluation(text: str, expected: float) -> None:
    assert value(text) == expected


def test_variables_and_names() -> None:
    e = compile_expr("memory_usage > 70 || memory_pressure_full_avg10 > 20", "rules.w", None)
    assert e.names == frozenset({"memory_usage", "memory_pressure_full_avg10"})
    assert e.evaluate({"memory_usage": 71, "memory_pressure_full_avg10": 0}) == 1.0
    assert e.evaluate({"memory_usage": 70, "memory_pressure_full_avg10": 20}) == 0.0
    assert e.matches({"memory_usage": 0, "memory_pressure_full_avg10": 21})


def test_infinite_variable_compares() -> None:
    # The engine passes eta_seconds=+inf when memory is not growing.
    e = compile_expr("eta_seconds < 120", "r", None)
    assert e.evaluate({"eta_seconds": math.inf}) == 0.0
    assert e.evaluate({"eta_seconds": 30.0}) == 1.0


def test_nan_variable_reads_as_zero() -> None:
    assert value("x == 0", x=math.nan) == 1.0


def test_value_of_at_least_one_matches() -> None:
    e = compile_expr("x", "r", None)
    assert e.matches({"x": 1.0})
    assert e.matches({"x": 50.0})
    assert not e.matches({"x": 0.5})


def test_logical_operators_short_circuit() -> None:
    # The right side is not evaluated, so a missing variable there is never looked up.
    assert value("0 && missing") == 0.0
    assert value("1 || missing") == 1.0
    with pytest.raises(KeyError, match="missing"):
        value("1 && missing")


def error_of(text: str, known: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        compile_expr(text, "rules.critical", known)
    (problem,) = info.value.problems
    return problem


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("memory_usage > (20))", 20, "unexpected token ')'"),
        ("memory_usage >", 15, "unexpected end of expression"),
        ("(1 + 2", 7, "expected ')' but found end of expression"),
        ("1 + * 2", 5, "unexpected token '*'"),
        ("a & b", 3, "unexpected character '&' (did you mean '&&'?)"),
        ("a = 1", 3, "did you mean '=='?"),
        ("a $ 1", 3, "unexpected character '$'"),
        ("x > 512Mi", 5, "malformed number '512Mi'"),
        ("1.2.3", 1, "malformed number '1.2.3'"),
        ("1 < x < 3", 7, "comparisons cannot be chained"),
        ("a == b != c", 8, "comparisons cannot be chained"),
        ("", 1, "empty expression"),
        ("1 2", 3, "unexpected token '2'"),
        ("()", 2, "unexpected token ')'"),
    ],
)
def test_error_names_key_position_and_points_a_caret(
    text: str, position: int, fragment: str
) -> None:
    problem = error_of(text)
    head, shown, caret = problem.split("\n")
    assert head.startswith("rules.critical: ")
    assert fragment in head
    assert head.endswith(f"at position {position}")
    assert shown == "  " + text
    assert caret == "  " + " " * (position - 1) + "^"


def test_caret_stays_aligned_across_tabs_and_newlines() -> None:
    problem = error_of("a >\n\t)")
    _head, shown, caret = problem.split("\n")
    assert shown == "  a >  )"
    assert caret.index("^") == shown.index(")")


def test_unknown_variable_is_a_compile_error_with_a_suggestion() -> None:
    known = ["memory_usage", "oom_score"]
    problem = error_of("memory_usage > 10 && memry_usage < 90", known)
    assert "unknown variable 'memry_usage' (did you mean 'memory_usage'?)" in problem
    assert "at position 22" in problem
    assert "use '&&'" in error_of("memory_usage > 1 and oom_score > 1", known)
    # Without a known set any name is accepted.
    assert compile_expr("anything_at_all > 1", "r", None).names == {"anything_at_all"}


def test_nesting_and_length_are_bounded() -> None:
    assert value("(" * (MAX_DEPTH - 1) + "1" + ")" * (MAX_DEPTH - 1)) == 1.0
    assert "nested deeper" in error_of("(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5))
    # A flat chain is shallow to parse but deep as a tree.
    assert "nested deeper" in error_of("+".join(["1"] * (MAX_DEPTH + 5)))
    assert "nested deeper" in error_of("-" * (MAX_DEPTH + 5) + "1")
    assert "longer than" in error_of("1" * (MAX_LENGTH + 1))


def test_non_string_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"rules.warning: expected an expression string \(got 5\)"
    ):
        compile_expr(5, "rules.warning", None)  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------

# An independent precedence table: (level, associativity). Level 7 is prefix, 9 is an atom.
LEVELS: dict[str, tuple[int, str]] = {
    "||": (1, "left"),
    "&&": (2, "left"),
    "==": (3, "none"),
    "!=": (3, "none"),
    "<": (4, "none"),
    "<=": (4, "none"),
    ">": (4, "none"),
    ">=": (4, "none"),
    "+": (5, "left"),
    "-": (5, "left"),
    "*": (6, "left"),
    "/": (6, "left"),
    "%": (6, "left"),
    "^": (8, "right"),
}
PREFIX = 7
ATOM = 9


@dataclass(frozen=True)
class T:
    """A generated tree: op is a binary operator, "neg"/"not", or "" for a leaf."""

    op: str
    kids: tuple[T, ...] = ()
    leaf: str = ""


def render(t: T) -> tuple[str, int]:
    """Text with only the parentheses LEVELS requires, and its level."""
    if not t.op:
        return t.leaf, ATOM
    if t.op in ("neg", "not"):
        text, level = render(t.kids[0])
        if level < PREFIX:
            text = f"({text})"
        return ("-" if t.op == "neg" else "!") + text, PREFIX
    level, assoc = LEVELS[t.op]
    (lt, ll), (rt, rl) = render(t.kids[0]), render(t.kids[1])
    if ll < level or (ll == level and assoc != "left"):
        lt = f"({lt})"
    if rl < level or (rl == level and assoc != "right"):
        rt = f"({rt})"
    return f"{lt} {t.op} {rt}", level


def canonical(t: T) -> str:
    """The parser's fully parenthesized form of the same tree."""
    if not t.op:
        return t.leaf
    if t.op in ("neg", "not"):
        return f"({'-' if t.op == 'neg' else '!'}{canonical(t.kids[0])})"
    return f"({canonical(t.kids[0])} {t.op} {canonical(t.kids[1])})"


def reference(t: T, env: dict[str, float]) -> float:
    if not t.op:
        return env[t.leaf] if t.leaf in env else float(t.leaf)
    if t.op == "neg":
        return -reference(t.kids[0], env)
    if t.op == "not":
        return 1.0 if reference(t.kids[0], env) == 0 else 0.0
    a, b = reference(t.kids[0], env), reference(t.kids[1], env)
    if t.op == "&&":
        return 1.0 if a != 0 and b != 0 else 0.0
    if t.op == "||":
        return 1.0 if a != 0 or b != 0 else 0.0
    return BINARY_OPERATORS[t.op](a, b)


leaves = st.one_of(
    st.integers(0, 20).map(lambda n: T("", leaf=str(n))),
    st.sampled_from(["0.5", "2.5"]).map(lambda s: T("", leaf=s)),
    st.sampled_from(["a", "b", "c"]).map(lambda s: T("", leaf=s)),
)


def extend(children: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    binary = st.builds(
        lambda op, x, y: T(op, (x, y)), st.sampled_from(sorted(LEVELS)), children, children
    )
    unary = st.builds(lambda op, x: T(op, (x,)), st.sampled_from(["neg", "not"]), children)
    return st.one_of(binary, unary)


trees = st.recursive(leaves, extend, max_leaves=12)
envs = st.fixed_dictionaries({k: st.floats(-100, 100, allow_nan=False) for k in ("a", "b", "c")})


@settings(max_examples=300)
@given(trees, envs)
def test_parse_matches_an_independent_precedence_table(t: T, env: dict[str, float]) -> None:
    text, _level = render(t)
    e = compile_expr(text, "r", {"a", "b", "c"})
    assert str(e) == canonical(t)
    got, want = e.evaluate(env), reference(t, env)
    assert got == want
    assert not math.isnan(got)


# Integer trees over + - * evaluate exactly in floats while values stay below 2**53.
int_trees = st.recursive(
    st.integers(0, 9).map(lambda n: T("", leaf=str(n))),
    lambda kids: st.builds(
        lambda op, x, y: T(op, (x, y)), st.sampled_from(["+", "-", "*"]), kids, kids
    ),
    max_leaves=8,
)


def exact(t: T) -> int:
    if not t.op:
        return int(t.leaf)
    a, b = exact(t.kids[0]), exact(t.kids[1])
    return a + b if t.op == "+" else a - b if t.op == "-" else a * b


@given(int_trees)
def test_arithmetic_matches_integer_arithmetic(t: T) -> None:
    assert value(render(t)[0]) == exact(t)


@st.composite
def noisy_arithmetic(draw: st.DrawFn) -> str:
    """Valid + - * text with random spacing, redundant parentheses and prefix signs."""
    pad = st.sampled_from(["", " ", "  ", "\t"])

    def term(depth: int) -> str:
        kind = draw(st.integers(0, 3 if depth < 4 else 0))
        if kind == 0:
            num = draw(
                st.one_of(
                    st.integers(0, 10**6).map(str),
                    st.floats(0, 1e6, allow_nan=False).map(repr),
                    st.sampled_from(["1e6", "2.5e-3", ".5", "3.", "x"]),
                )
            )
            return num
        if kind == 1:
            return draw(pad) + "(" + draw(pad) + term(depth + 1) + draw(pad) + ")"
        if kind == 2:
            return draw(st.sampled_from(["-", "+", "- "])) + term(depth + 1)
        op = draw(st.sampled_from(["+", "-", "*"]))
        return term(depth + 1) + draw(pad) + op + draw(pad) + term(depth + 1)

    return draw(pad) + term(0) + draw(pad)


@given(noisy_arithmetic(), st.floats(allow_nan=False))
def test_random_arithmetic_never_crashes(text: str, x: float) -> None:
    result = compile_expr(text, "rules.warning", {"x"}).evaluate({"x": x})
    assert isinstance(result, float)
    assert not math.isnan(result)


@given(st.text(alphabet="ab01.e()+-*/%^!<>=&| \t", max_size=30))
def test_any_text_compiles_or_raises_config_error(text: str) -> None:
    problem: str | None = None
    try:
        e = compile_expr(text, "rules.warning", {"a", "b", "e"})
    except ConfigError as exc:
        problem = exc.problems[0]
    if problem is None:
        assert not math.isnan(e.evaluate({"a": 1.0, "b": 0.0, "e": 2.0}))
    else:
        assert problem.startswith("rules.warning: ")
        assert problem.count("\n") == 2
