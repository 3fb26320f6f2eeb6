"""pressured.settings: the Checker every configuration room checks its keys with."""

from __future__ import annotations

import math
import signal
from typing import Any

import pytest

from pressured.errors import ConfigError
from pressured.settings import COMMA, Checker, parse_duration, parse_signal

BIG = "x" * 100_000


def test_every_problem_is_collected_and_raised_at_once() -> None:
    check = Checker()
    assert check.flag("maybe", "a.on", False) is False
    assert check.number("lots", "a.n", 7.0) == 7.0
    with pytest.raises(ConfigError) as info:
        check.raise_if_any()
    assert info.value.problems == [
        "a.on: expected true or false (got 'maybe')",
        "a.n: expected a number (got 'lots')",
    ]


def test_no_problem_raises_nothing() -> None:
    check = Checker()
    assert check.flag(True, "a.on", False) is True
    check.raise_if_any()
    assert check.problems == []


def test_the_comma_form_names_where_the_value_came_from() -> None:
    check = Checker(got=COMMA, origin=lambda where: "file:/etc/p.yaml" if where == "a" else None)
    check.number(0, "a", None, min=10, integer=True)
    check.number(0, "b", None, min=10, integer=True)
    assert check.problems == [
        "a: must be at least 10, got 0 (from file:/etc/p.yaml)",
        "b: must be at least 10, got 0",
    ]


# --- sections and unknown keys


def test_section_of_none_is_empty_and_a_non_mapping_is_a_problem() -> None:
    check = Checker()
    assert check.section(None, "s", {"a"}) == {}
    assert check.section([1], "s", {"a"}) == {}
    assert check.problems == ["s: expected a mapping (got [1])"]


def test_unknown_keys_suggest_the_closest_or_list_the_known() -> None:
    check = Checker()
    section = check.section({"pth": 1, "zzqx": 2, "path": 3}, "s", ("path", "type"))
    assert section == {"pth": 1, "zzqx": 2, "path": 3}
    assert check.problems == [
        "s.pth: unknown key (did you mean 'path'?)",
        "s.zzqx: unknown key (known: path, type)",
    ]


def test_unknown_option_wording_and_a_long_key_quoted() -> None:
    check = Checker()
    check.section({BIG: 1}, "actions[0]", {"path"}, noun="option for type 'log'")
    (problem,) = check.problems
    assert problem.startswith("actions[0].'xxxx")
    assert "characters): unknown option for type 'log' (known: path)" in problem
    assert len(problem) < 300


# --- values


def test_kind_names_python_types_and_a_bool_is_no_int() -> None:
    check = Checker(got=COMMA)
    assert check.kind("x", "a", (str, list)) == "x"
    assert check.kind(True, "b", int) is None
    assert check.kind(None, "c", str, "d", nullable=True) == "d"
    assert check.problems == ["b: expected int, got True"]


def test_flag_from_text() -> None:
    check = Checker()
    assert check.flag(" Yes ", "a", False, from_text=True) is True
    assert check.flag("off", "a", True, from_text=True) is False
    assert check.flag("yes", "b", False) is False
    assert check.flag(None, "c", True, nullable=True) is True
    assert check.problems == ["b: expected true or false (got 'yes')"]


def test_text_and_path() -> None:
    check = Checker()
    assert check.text("", "a", "d") == ""
    assert check.text("  ", "b", "d", empty=False) == "d"
    assert check.text(5, "c", None) is None
    assert check.text("", "d", None, expected="a host address", empty=False) is None
    assert check.path("/x", "e", None) == "/x"
    assert check.path("x", "f", None) is None
    assert check.path(5, "g", None) is None
    assert check.problems == [
        "b: must be a non-empty string (got '  ')",
        "c: expected a string (got 5)",
        "d: expected a host address (got '')",
        "f: must be an absolute path (got 'x')",
        "g: expected an absolute path (got 5)",
    ]


@pytest.mark.parametrize("value", [True, math.nan, math.inf, -math.inf, 10**400, "1", None])
def test_number_refuses_what_is_not_a_finite_number(value: Any) -> None:
    check = Checker()
    assert check.number(value, "a", 1.0) == 1.0
    (problem,) = check.problems
    assert problem.startswith("a: expected a number (got ")


def test_number_bounds_name_the_bound_broken() -> None:
    check = Checker()
    assert check.number(5, "a", None, min=1, max=10) == 5.0
    assert isinstance(check.number(5, "a", None, min=1, max=10), float)
    assert check.number(0, "b", None, above=0, max=100) is None
    assert check.number(101, "c", None, above=0, max=100.0) is None
    assert check.number(2, "d", None, min=3, max=300) is None
    assert check.number(10**29, "e", None, max=3_600_000, integer=True) is None
    assert check.number(1e29, "f", None, max=86_400.0) is None
    assert check.number(0.25, "g", None, min=0.5) is None
    assert check.problems == [
        "b: must be above 0 (got 0)",
        "c: must be at most 100 (got 101)",
        "d: must be at least 3 (got 2)",
        "e: must be at most 3600000 (got 100000000000000000000000000000)",
        "f: must be at most 86400 (got 1e+29)",
        "g: must be at least 0.5 (got 0.25)",
    ]


def test_integer_numbers() -> None:
    check = Checker()
    assert check.number(7, "a", None, integer=True) == 7
    assert check.number(7.0, "b", None, integer=True) is None
    assert check.number(" 9100 ", "c", None, integer=True, from_text=True) == 9100
    assert check.number("9100", "d", None, integer=True) is None
    assert check.number("9" * 5000, "e", None, integer=True, from_text=True) is None
    assert [p.split(":")[0] for p in check.problems] == ["b", "d", "e"]
    assert check.problems[0] == "b: expected an integer (got 7.0)"


def test_number_from_text_and_a_named_expectation() -> None:
    check = Checker()
    assert check.number(" 2.5 ", "a", None, from_text=True) == 2.5
    assert check.number("nan", "b", None, from_text=True) is None
    expected = "a port number 0-65535"
    assert check.number(70000, "c", None, min=0, max=65535, integer=True, expected=expected) is None
    assert check.number("x", "d", None, integer=True, expected=expected) is None
    assert check.problems == [
        "b: expected a number (got 'nan')",
        "c: expected a port number 0-65535 (got 70000)",
        "d: expected a port number 0-65535 (got 'x')",
    ]


def test_choice() -> None:
    check = Checker()
    assert check.choice("usage", "a", ("working_set", "usage"), None) == "usage"
    assert check.choice("DEBUG", "b", ("debug", "info"), None, fold_case=True) == "DEBUG"
    assert check.choice("S3", "c", ("local", "s3"), "local") == "local"
    assert check.choice(["s3"], "d", ("local", "s3"), None) is None
    assert check.problems == [
        "c: must be one of local, s3 (got 'S3') (did you mean 's3'?)",
        "d: must be one of local, s3 (got ['s3'])",
    ]


def test_values_are_quoted_briefly() -> None:
    check = Checker()
    check.number(BIG, "a", None)
    check.choice(BIG, "b", ("local", "s3"), None)
    check.signal(BIG, "c", None)
    check.duration(BIG, "d", None)
    assert len(check.problems) == 4
    for problem in check.problems:
        assert len(problem) < 300, problem[:300]
        assert "characters)" in problem


# --- durations and signals


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("45", 45.0), (" 10s ", 10.0), ("250us", 0.00025), (90, 90.0)],
)
def test_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1m30", "nan", "inf", True, None])
def test_duration_rejects(text: Any) -> None:
    with pytest.raises(ConfigError, match=r"^where: not a duration: "):
        parse_duration(text, "where")


def test_duration_bounds() -> None:
    check = Checker()
    assert check.duration("2h", "a", None, max=3600) is None
    assert check.problems == ["a: must be at most 3600 (got '2h')"]


def test_signal() -> None:
    assert parse_signal("usr1", "x") == signal.SIGUSR1
    assert parse_signal(" 15 ", "x") == signal.SIGTERM
    check = Checker()
    assert check.signal(999, "a", None) is None
    assert check.signal("-10", "b", None) is None
    assert check.signal("²", "c", None) is None
    assert check.problems == [
        "a: no such signal number: 999",
        "b: not a signal name: '-10' (e.g. SIGUSR1)",
        "c: not a signal name: '²' (e.g. SIGUSR1)",
    ]
