"""pressured.io/* annotations: good values become overrides, bad ones warnings and defaults."""

from __future__ import annotations

import pytest

from pressured.k8s.annotations import (
    event_annotations,
    parse_annotations,
    pprof_path,
    pprof_port,
    validated_annotations,
)
from pressured.model import Overrides


def test_good_values() -> None:
    got = parse_annotations(
        {
            "pressured.io/warn-percent": "60",
            "pressured.io/critical-percent": "92.5",
            "pressured.io/cooldown-seconds": "300",
            "pressured.io/pprof-enabled": "true",
            "pressured.io/pprof-port": "6060",
            "pressured.io/pprof-path": "/debug/pprof/heap",
            "app.kubernetes.io/name": "web",
        },
        "shop/web",
    )
    assert got.warnings == ()
    assert got.overrides == Overrides(60.0, 92.5, 300.0)
    assert (got.pprof.enabled, got.pprof.port, got.pprof.path) == (True, 6060, "/debug/pprof/heap")


def test_nothing_set_means_defaults() -> None:
    got = parse_annotations({})
    assert got.overrides == Overrides()
    assert got.pprof.enabled is None
    assert got.warnings == ()


def test_tolerated_spellings() -> None:
    got = parse_annotations(
        {
            "pressured.io/warn-percent": " 75% ",
            "pressured.io/cooldown-seconds": "30s",
            "pressured.io/pprof-enabled": "No",
        }
    )
    assert got.warnings == ()
    assert got.overrides.warn_percent == 75.0
    assert got.overrides.cooldown_seconds == 30.0
    assert got.pprof.enabled is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pressured.io/warn-percent", "ninety"),
        ("pressured.io/warn-percent", "0"),
        ("pressured.io/warn-percent", "150"),
        ("pressured.io/warn-percent", "nan"),
        ("pressured.io/critical-percent", "-5"),
        ("pressured.io/critical-percent", "inf"),
        ("pressured.io/cooldown-seconds", "soon"),
        ("pressured.io/cooldown-seconds", "-1"),
        ("pressured.io/pprof-enabled", "maybe"),
        ("pressured.io/pprof-port", "http"),
        ("pressured.io/pprof-port", "70000"),
        ("pressured.io/pprof-port", "0"),
        ("pressured.io/pprof-path", "debug/pprof/heap"),
        ("pressured.io/pprof-path", "/debug/pprof heap"),
        # what would make "http://<pod-ip>:<port><path>" name another host
        ("pressured.io/pprof-port", "6060@169.254.169.254:80"),
        ("pressured.io/pprof-port", "6060/"),
        ("pressured.io/pprof-port", "6_060"),
        ("pressured.io/pprof-port", "+6060"),
        ("pressured.io/pprof-port", "\u0666\u0660\u0666\u0660"),  # Arabic-Indic digits
        ("pressured.io/pprof-path", "//169.254.169.254/latest"),
        ("pressured.io/pprof-path", "/x@169.254.169.254/"),
        ("pressured.io/pprof-path", "/debug//heap"),
        ("pressured.io/pprof-path", "/\\169.254.169.254/"),
        ("pressured.io/pprof-path", "/debug/pprof/heap\r\nHost: evil"),
        ("pressured.io/pprof-path", "/debug/\x00heap"),
        ("pressured.io/warn-percnt", "60"),
    ],
)
def test_bad_value_warns_names_it_and_keeps_the_default(key: str, value: str) -> None:
    got = parse_annotations({key: value}, "shop/web")
    assert len(got.warnings) == 1
    warning = got.warnings[0]
    assert warning.startswith("shop/web: annotation ")
    assert key in warning
    assert repr(value) in warning
    assert got.overrides == Overrides()
    assert (got.pprof.enabled, got.pprof.port, got.pprof.path) == (None, None, None)


def test_warn_above_critical_keeps_critical_only() -> None:
    got = parse_annotations(
        {"pressured.io/warn-percent": "95", "pressured.io/critical-percent": "90"}
    )
    assert got.overrides == Overrides(warn_percent=None, critical_percent=90.0)
    assert len(got.warnings) == 1
    assert "pressured.io/warn-percent" in got.warnings[0]


def test_one_bad_value_does_not_spoil_the_others() -> None:
    got = parse_annotations(
        {
            "pressured.io/warn-percent": "65",
            "pressured.io/critical-percent": "lots",
            "pressured.io/pprof-port": "6060",
        }
    )
    assert got.overrides == Overrides(warn_percent=65.0)
    assert got.pprof.port == 6060
    assert len(got.warnings) == 1


def test_event_annotations_drop_kubectls_manifest_copy() -> None:
    got = event_annotations(
        {
            "kubectl.kubernetes.io/last-applied-configuration": '{"kind":"Pod"}',
            "pressured.io/warn-percent": "60",
            "team": "payments",
        }
    )
    assert got == {"pressured.io/warn-percent": "60", "team": "payments"}


def test_pprof_port_and_path_accept_plain_values_only() -> None:
    assert pprof_port(" 8080 ") == 8080
    assert pprof_path(" /debug/pprof/heap?gc=1 ") == "/debug/pprof/heap?gc=1"
    with pytest.raises(ValueError, match="not a port number"):
        pprof_port("80@10.0.0.1")
    with pytest.raises(ValueError, match="absolute URL path"):
        pprof_path("http://10.0.0.1/")


def test_validated_annotations_leave_refused_values_out() -> None:
    got, settings = validated_annotations(
        {
            "pressured.io/pprof-port": " 6061 ",
            "pressured.io/pprof-path": "@evil/x",
            "pressured.io/warn-percent": "60",
            "pressured.io/critical-percent": "lots",
            "pressured.io/unknown": "1",
            "team": "payments",
        },
        "shop/web",
    )
    assert got == {
        "pressured.io/pprof-port": "6061",
        "pressured.io/warn-percent": "60",
        "team": "payments",
    }
    assert (settings.pprof.port, settings.pprof.path) == (6061, None)
    assert len(settings.warnings) == 3
    assert all(w.startswith("shop/web: annotation pressured.io/") for w in settings.warnings)


MB = 1 << 20


@pytest.mark.parametrize(
    "annotations",
    [
        {"pressured.io/pprof-port": "6" * MB},
        {"pressured.io/pprof-path": "/" + "x" * MB + "//"},
        {"pressured.io/pprof-enabled": "y" * MB},
        {"pressured.io/warn-percent": "9" * MB},
        {"pressured.io/cooldown-seconds": "x" * MB},
        # accepted alone: the warning names it as the bound the other one broke
        {"pressured.io/warn-percent": "90", "pressured.io/critical-percent": "0" * MB + "50"},
        {"pressured.io/" + "k" * MB: "1"},
    ],
    ids=lambda a: ",".join(k[:30] for k in a),
)
def test_a_huge_annotation_value_is_quoted_briefly(annotations: dict[str, str]) -> None:
    (warning,) = parse_annotations(annotations, "shop/web").warnings
    assert len(warning) < 500, warning[:600]
    assert "characters)" in warning or warning.endswith("(50)")
