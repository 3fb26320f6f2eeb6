"""pressured.config: defaults, file, environment and flags, provenance, and every error path.

Every test passes an explicit ``env`` dict: the real environment never leaks in.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from pressured import config
from pressured.actions.base import ActionContext
from pressured.actions.signal import SignalAction
from pressured.config import Config, load, parse_duration, parse_signal
from pressured.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "pressured.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems(path: str | None = None, *, env: dict[str, str] | None = None, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env=env or {}, **kw)
    return info.value.problems


def one_problem(path: str | None = None, *, env: dict[str, str] | None = None, **kw: Any) -> str:
    found = problems(path, env=env, **kw)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------- defaults


def test_defaults_without_file_env_or_flags() -> None:
    cfg = load(None, env={})
    assert cfg.file is None
    assert cfg.mode == "local"
    assert cfg.dry_run is False
    assert cfg.get("thresholds.warn_percent") == 70.0
    assert cfg.get("thresholds.critical_percent") == 85.0
    assert cfg.get("source.cgroup.path") == "/sys/fs/cgroup"
    assert cfg.get("source.cgroup.paths") == []
    assert cfg.actions == [{"type": "log"}]
    assert cfg.origin == {}
    rows = {k: (v, o) for k, v, o in cfg.explain()}
    assert rows["thresholds.warn_percent"] == (70.0, "default")
    assert rows["actions[0]"] == ({"type": "log"}, "default")


def test_get_returns_the_default_for_a_missing_path() -> None:
    cfg = load(None, env={})
    assert cfg.get("thresholds.nope") is None
    assert cfg.get("source.mode.deeper", "x") == "x"


def test_defaults_do_not_leak_between_loads() -> None:
    first = load(None, env={})
    first.data["source"]["cgroup"]["paths"].append("/mutated")
    assert load(None, env={}).get("source.cgroup.paths") == []


# ---------------------------------------------------------------------- files


def test_yaml_file_values_and_origins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "thresholds:\n  warn_percent: 60\n  critical_percent: 90\n"
        "source:\n  psi:\n    kind: full\n"
        "actions:\n  - type: log\n  - {type: signal, processes: oldest}\n",
    )
    cfg = load(path, env={})
    assert cfg.file == path
    assert cfg.get("thresholds.warn_percent") == 60
    assert cfg.get("thresholds.critical_percent") == 90
    # a sibling not in the file keeps its default
    assert cfg.get("source.psi.stall_us") == 150_000
    assert cfg.get("source.psi.kind") == "full"
    assert cfg.origin["thresholds.warn_percent"] == f"file:{path}"
    assert cfg.origin["source.psi.kind"] == f"file:{path}"
    assert "source.psi.stall_us" not in cfg.origin
    assert cfg.actions == [{"type": "log"}, {"type": "signal", "processes": "oldest"}]
    rows = {k: (v, o) for k, v, o in cfg.explain()}
    assert rows["actions[1]"] == ({"type": "signal", "processes": "oldest"}, f"file:{path}")
    assert rows["source.psi.stall_us"] == (150_000, "default")


def test_json_file_values(tmp_path: Path) -> None:
    doc = {"source": {"mode": "node", "poll_interval_ms": 500}, "dry_run": True}
    path = write(tmp_path, json.dumps(doc), "pressured.json")
    cfg = load(path, env={})
    assert cfg.mode == "node"
    assert cfg.get("source.poll_interval_ms") == 500
    assert cfg.dry_run is True
    assert cfg.origin["dry_run"] == f"file:{path}"


def test_config_file_from_env_pressured_config(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: debug\n")
    cfg = load(None, env={"PRESSURED_CONFIG": path})
    assert cfg.file == path
    assert cfg.get("log_level") == "debug"


def test_empty_file_and_empty_section_keep_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), env={}).get("thresholds.warn_percent") == 70.0
    # a section whose keys are all commented out parses as null
    cfg = load(write(tmp_path, "thresholds:\n#  warn_percent: 50\nlog_level: error\n"), env={})
    assert cfg.get("thresholds.warn_percent") == 70.0
    assert cfg.get("log_level") == "error"


# ---------------------------------------------------------------------- environment


def test_env_named_keys_are_typed_like_their_defaults() -> None:
    cfg = load(
        None,
        env={
            "PRESSURED_WARN_PERCENT": "55",
            "PRESSURED_METRICS_PORT": "9100",
            "PRESSURED_DRY_RUN": "yes",
            "PRESSURED_MODE": "sidecar",
            "POD_NAME": "web-0",
        },
    )
    assert cfg.get("thresholds.warn_percent") == 55.0
    assert cfg.get("metrics.port") == 9100
    assert cfg.dry_run is True
    assert cfg.mode == "sidecar"
    assert cfg.get("kubernetes.pod_name") == "web-0"
    assert cfg.origin["metrics.port"] == "env:PRESSURED_METRICS_PORT"
    assert cfg.origin["kubernetes.pod_name"] == "env:POD_NAME"


def test_env_by_path_reaches_any_key() -> None:
    cfg = load(
        None,
        env={
            "PRESSURED__STORAGE__S3__BUCKET": "dumps",
            "PRESSURED__SOURCE__CGROUP__PATHS": "/sys/fs/cgroup/a,/sys/fs/cgroup/b",
            "PRESSURED__KILLS__KMSG__ENABLED": "false",
        },
    )
    assert cfg.get("storage.s3.bucket") == "dumps"
    assert cfg.get("source.cgroup.paths") == ["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"]
    assert cfg.get("kills.kmsg.enabled") is False
    assert cfg.origin["storage.s3.bucket"] == "env:PRESSURED__STORAGE__S3__BUCKET"


def test_env_actions_as_json() -> None:
    cfg = load(None, env={"PRESSURED__ACTIONS": '[{"type": "exec", "command": "true"}]'})
    assert cfg.actions == [{"type": "exec", "command": "true"}]
    assert cfg.origin["actions"] == "env:PRESSURED__ACTIONS"


def test_empty_env_variables_count_as_unset() -> None:
    cfg = load(None, env={"PRESSURED_WARN_PERCENT": "", "PRESSURED__LOG_LEVEL": ""})
    assert cfg.get("thresholds.warn_percent") == 70.0
    assert cfg.get("log_level") == "info"
    assert cfg.origin == {}


def test_oomhero_thresholds_and_cooldown_go_duration() -> None:
    cfg = load(None, env={"WARNING": "60", "CRITICAL": "80", "COOLDOWN": "1m30s"})
    assert cfg.get("thresholds.warn_percent") == 60.0
    assert cfg.get("thresholds.critical_percent") == 80.0
    assert cfg.get("thresholds.cooldown_seconds") == 90.0
    assert cfg.origin["thresholds.cooldown_seconds"] == "env:COOLDOWN"


def test_oomhero_cooldown_bare_seconds() -> None:
    assert load(None, env={"COOLDOWN": "45"}).get("thresholds.cooldown_seconds") == 45.0


def test_oomhero_signal_variables_add_a_signal_action() -> None:
    cfg = load(None, env={"WARNING_SIGNAL": "SIGTERM", "CRITICAL_SIGNAL": "KILL"})
    assert cfg.actions == [
        {"type": "log"},
        {"type": "signal", "warn": "SIGTERM", "critical": "KILL"},
    ]
    assert "env:WARNING_SIGNAL/CRITICAL_SIGNAL" in cfg.origin["actions"]
    action = SignalAction(cfg.actions[1], ActionContext(), "actions[1]")
    assert action.signals["warn"] == signal.SIGTERM
    assert action.signals["critical"] == signal.SIGKILL


def test_oomhero_signal_variable_overrides_a_configured_signal_action(tmp_path: Path) -> None:
    path = write(tmp_path, "actions:\n  - {type: signal, warn: SIGUSR1, critical: SIGUSR2}\n")
    cfg = load(path, env={"WARNING_SIGNAL": "SIGHUP"})
    # the environment outranks the file: no second signal action, the file's one is changed
    assert cfg.actions == [{"type": "signal", "warn": "SIGHUP", "critical": "SIGUSR2"}]
    assert cfg.origin["actions"] == f"file:{path} + env:WARNING_SIGNAL"


# ---------------------------------------------------------------------- precedence


def test_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "thresholds: {warn_percent: 50, critical_percent: 90, hysteresis_percent: 2}\n"
        "log_level: error\n",
    )
    env = {"PRESSURED_WARN_PERCENT": "55", "PRESSURED_CRITICAL_PERCENT": "95"}
    flags = {"thresholds.warn_percent": 60.0, "dry_run": None}
    cfg = load(path, env=env, flags=flags)
    assert cfg.get("thresholds.warn_percent") == 60.0
    assert cfg.get("thresholds.critical_percent") == 95.0
    assert cfg.get("thresholds.hysteresis_percent") == 2
    assert cfg.get("thresholds.cooldown_seconds") == 60.0
    assert cfg.get("dry_run") is False  # a flag given as None was not given
    assert cfg.origin["thresholds.warn_percent"] == "flag:thresholds.warn_percent"
    assert cfg.origin["thresholds.critical_percent"] == "env:PRESSURED_CRITICAL_PERCENT"
    assert cfg.origin["thresholds.hysteresis_percent"] == f"file:{path}"
    assert "thresholds.cooldown_seconds" not in cfg.origin
    assert "dry_run" not in cfg.origin
    rows = {k: o for k, _, o in cfg.explain()}
    assert rows["thresholds.warn_percent"] == "flag:thresholds.warn_percent"
    assert rows["thresholds.cooldown_seconds"] == "default"


def test_within_env_the_most_specific_name_wins() -> None:
    env = {"WARNING": "50", "PRESSURED_WARN_PERCENT": "55"}
    cfg = load(None, env=env)
    assert cfg.get("thresholds.warn_percent") == 55.0
    cfg = load(None, env={**env, "PRESSURED__THRESHOLDS__WARN_PERCENT": "60"})
    assert cfg.get("thresholds.warn_percent") == 60.0
    assert cfg.origin["thresholds.warn_percent"] == "env:PRESSURED__THRESHOLDS__WARN_PERCENT"


def test_flag_lists_are_copied() -> None:
    paths = ["/sys/fs/cgroup/a"]
    cfg = load(None, env={}, flags={"source.cgroup.paths": paths})
    paths.append("/sys/fs/cgroup/b")
    assert cfg.get("source.cgroup.paths") == ["/sys/fs/cgroup/a"]


# ---------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "thresholds:\n  warn_precent: 50\n")
    msg = one_problem(path)
    assert msg.startswith("thresholds.warn_precent: unknown key")
    assert f"file:{path}" in msg
    assert "did you mean 'thresholds.warn_percent'?" in msg


def test_unknown_top_level_section_suggests(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "tresholds:\n  warn_percent: 50\n"))
    assert msg.startswith("tresholds: unknown key")
    assert "did you mean 'thresholds'?" in msg


def test_unknown_key_far_from_any_gives_no_suggestion(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "source:\n  zzqx: 1\n"))
    assert msg.startswith("source.zzqx: unknown key")
    assert "did you mean" not in msg


def test_unknown_env_path_and_flag_suggest() -> None:
    msg = one_problem(env={"PRESSURED__THRESHOLDS__WARN_PRECENT": "50"})
    assert msg.startswith("thresholds.warn_precent: unknown key (from env:PRESSURED__THRESHOLDS")
    assert "did you mean 'thresholds.warn_percent'?" in msg
    msg = one_problem(flags={"thresholds.critcal_percent": 90.0})
    assert msg.startswith("thresholds.critcal_percent: unknown key (from flags)")
    assert "did you mean 'thresholds.critical_percent'?" in msg


def test_non_text_key(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "source:\n  1: x\n"))
    assert msg.startswith("source.1: keys must be text, got 1")


# ---------------------------------------------------------------------- wrong values


def test_wrong_type_names_key_value_and_origin(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  poll_interval_ms: fast\n")
    msg = one_problem(path)
    assert msg == f"source.poll_interval_ms: expected an integer, got 'fast' (from file:{path})"


def test_a_boolean_is_not_an_integer_and_is_reported_once(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "source:\n  min_interval_ms: true\n"))
    assert msg.startswith("source.min_interval_ms: expected an integer, got True")


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "thresholds: 5\n"))
    assert msg.startswith("thresholds: expected a mapping, got 5")


def test_bad_mode_suggests(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "source:\n  mode: lcoal\n"))
    assert msg.startswith("source.mode: must be one of local, sidecar, node, cluster, got 'lcoal'")
    assert "did you mean 'local'?" in msg


def test_bad_log_level_from_flag_names_the_flag() -> None:
    msg = one_problem(flags={"log_level": "warn"})
    assert msg.startswith("log_level: must be one of debug, info, warning, error, got 'warn'")
    assert "(from flag:log_level)" in msg
    assert "did you mean 'warning'?" in msg


def test_log_level_is_case_insensitive() -> None:
    assert load(None, env={}, flags={"log_level": "DEBUG"}).get("log_level") == "DEBUG"


def test_bad_env_values_name_the_variable() -> None:
    found = problems(
        env={"PRESSURED_METRICS_PORT": "http", "PRESSURED_DRY_RUN": "maybe", "WARNING": "lots"}
    )
    assert (
        "metrics.port (from env:PRESSURED_METRICS_PORT): expected an integer, got 'http'" in found
    )
    assert "dry_run (from env:PRESSURED_DRY_RUN): expected true or false, got 'maybe'" in found
    assert "thresholds.warn_percent (from env:WARNING): expected a number, got 'lots'" in found


def test_bad_cooldown_duration() -> None:
    msg = one_problem(env={"COOLDOWN": "1m30"})
    assert msg.startswith("thresholds.cooldown_seconds (from env:COOLDOWN): not a duration: '1m30'")


def test_bad_actions_json_in_env() -> None:
    msg = one_problem(env={"PRESSURED__ACTIONS": '[{"type"'})
    assert msg.startswith("actions (from env:PRESSURED__ACTIONS): expected JSON")


def test_bad_signal_name_in_env() -> None:
    msg = one_problem(env={"CRITICAL_SIGNAL": "SIGNOPE"})
    assert msg == "env:CRITICAL_SIGNAL: not a signal name: 'SIGNOPE' (e.g. SIGUSR1)"


def test_relative_cgroup_flag_path() -> None:
    msg = one_problem(flags={"source.cgroup.paths": ["/sys/fs/cgroup/a", "kubepods/x"]})
    assert msg == (
        "source.cgroup.paths[1]: must be an absolute path, got 'kubepods/x' "
        "(from flag:source.cgroup.paths)"
    )


def test_relative_cgroup_root_and_paths_not_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  cgroup:\n    path: sys/fs/cgroup\n    paths: /a\n")
    found = problems(path)
    assert (
        f"source.cgroup.path: must be an absolute path, got 'sys/fs/cgroup' (from file:{path})"
        in found
    )
    assert any(p.startswith("source.cgroup.paths: expected a list") and "'/a'" in p for p in found)


def test_port_out_of_range_is_reported_once() -> None:
    msg = one_problem(flags={"metrics.port": 70000})
    assert msg.startswith("metrics.port: must be at most 65535, got 70000")


def test_interval_and_psi_cross_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "source:\n  min_interval_ms: 2000\n  poll_interval_ms: 1000\n"
        "  psi: {kind: partial, stall_us: 2000000, window_us: 1000000}\n",
    )
    found = problems(path)
    assert "source.min_interval_ms: 2000 is above source.poll_interval_ms 1000" in found
    assert "source.psi.stall_us: 2000000 is above source.psi.window_us 1000000" in found
    assert any(
        p.startswith("source.psi.kind: must be one of some, full, got 'partial'") for p in found
    )


def test_actions_shape(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "actions: {type: log}\n"))
    assert msg.startswith("actions: expected a list of {type: NAME, ...}")
    msg = one_problem(write(tmp_path, "actions:\n  - log\n"))
    assert msg == "actions[0]: expected a mapping with a 'type', got 'log'"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  mode: nodes\n  proc_root: 5\nlog_level: loud\nbogus: 1\n")
    found = problems(path)
    assert len(found) == 4, found
    assert {p.split(":")[0] for p in found} == {
        "source.mode",
        "source.proc_root",
        "log_level",
        "bogus",
    }


def test_kills_are_checked_by_the_rules_the_daemon_runs_by(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "kills:\n  window_seconds: 301\n"))
    assert msg == "kills.window_seconds: expected a number of seconds in (0, 300] (got 301)"
    msg = one_problem(write(tmp_path, "kills:\n  window_seconds: 0\n"))
    assert msg.startswith("kills.window_seconds:") and "(got 0)" in msg
    found = problems(write(tmp_path, "kills:\n  kmsg: {enabled: yes please, path: dev/kmsg}\n"))
    assert found == [
        "kills.kmsg.enabled: expected true or false (got 'yes please')",
        "kills.kmsg.path: must be an absolute path (got 'dev/kmsg')",
    ]


def test_validate_false_skips_the_checks() -> None:
    cfg = load(None, env={}, flags={"source.mode": "nowhere"}, validate=False)
    assert cfg.mode == "nowhere"
    assert any(p.startswith("source.mode:") for p in config.check(cfg))


# ---------------------------------------------------------------------- unreadable files


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "thresholds:\n  warn_percent: 50\n  critical_percent: [90\n")
    msg = one_problem(path)
    assert msg.startswith(f"{path}:4:1: invalid YAML:")


def test_bad_yaml_indentation_line(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  mode: local\n bad: 1\n")
    msg = one_problem(path)
    assert msg.startswith(f"{path}:3:")
    assert "invalid YAML" in msg


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "dry_run": tru\n}\n', "pressured.json")
    msg = one_problem(path)
    assert msg.startswith(f"{path}:2:14: invalid JSON:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert one_problem(path) == f"{path}: the top level must be a mapping, got list"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    assert one_problem(path) == f"{path}: cannot read config file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert one_problem(str(tmp_path)) == f"{tmp_path}: cannot read config file: Is a directory"


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "pressured.yaml"
    path.write_bytes(b"log_level: \xff\xfe\n")
    msg = one_problem(str(path))
    assert msg.startswith(f"{path}: not a text file (byte 11: invalid UTF-8)")


# ---------------------------------------------------------------------- delegated sections


def test_warn_at_or_above_critical_is_the_engines_error(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "thresholds: {warn_percent: 90, critical_percent: 90}\n"))
    assert msg == "thresholds.warn_percent: must be below critical_percent (90.0) (got 90.0)"


def test_bad_threshold_value_type(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "thresholds:\n  warn_percent: abc\n"))
    assert msg == "thresholds.warn_percent: expected a number (got 'abc')"


def test_bad_rule_expression_shows_a_caret(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "rules:\n  warning: memory_usage >> 3\n"))
    head, expr, caret = msg.split("\n")
    assert head == "rules.warning: unexpected token '>' at position 15"
    assert expr.strip() == "memory_usage >> 3"
    # the caret sits under the offending character
    assert expr[caret.index("^")] == ">"
    assert caret.index("^") == expr.index(">>") + 1


def test_unknown_rule_variable(tmp_path: Path) -> None:
    msg = one_problem(write(tmp_path, "rules:\n  critical: memory_usge > 90\n"))
    assert msg.startswith("rules.critical:")
    assert "memory_usge" in msg


def test_storage_is_checked_only_when_an_action_uses_it(tmp_path: Path) -> None:
    load(write(tmp_path, "storage: {type: ftp}\n"), env={})  # nothing stores: not checked
    path = write(tmp_path, "storage: {type: ftp}\nactions:\n  - {type: heapdump}\n")
    assert one_problem(path) == "storage.type: must be one of local, s3 (got 'ftp')"


# ---------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30s", 90.0),
        ("45", 45.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1h2m3s", 3723.0),
        ("250us", 0.00025),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1m30", "s", "10x", "1m 30s", "-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^where: not a duration"):
        parse_duration(text, "where")


@pytest.mark.parametrize(
    ("value", "sig"),
    [
        ("SIGUSR1", signal.SIGUSR1),
        ("usr2", signal.SIGUSR2),
        ("TERM", signal.SIGTERM),
        (9, signal.SIGKILL),
        ("10", signal.SIGUSR1),
    ],
)
def test_parse_signal(value: Any, sig: int) -> None:
    assert parse_signal(value, "x") == sig


@pytest.mark.parametrize("value", ["SIGNOPE", True, 999, None, 1.5])
def test_parse_signal_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^actions\[0\]\.warn: "):
        parse_signal(value, "actions[0].warn")


def test_config_dataclass_explain_lists_every_leaf_once() -> None:
    cfg = Config({"a": {"b": 1, "c": {"d": 2}}, "actions": [{"type": "log"}]}, {"a.b": "flag:a.b"})
    assert cfg.explain() == [
        ("a.b", 1, "flag:a.b"),
        ("a.c.d", 2, "default"),
        ("actions[0]", {"type": "log"}, "default"),
    ]
