"""The typer CLI: help, version, `config check`, `diagnose` on a fake cgroup v2 tree, exit codes.

`run` and the original `pressured -c FILE -l debug -d` start the daemon, which installs signal
handlers and lowers its own oom_score_adj: where the daemon would get that far, they run in a
child process (`python -m pressured`), never inside the test process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from pressured import __version__
from pressured.cli import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, app

MiB = 1 << 20

# every variable pressured.config reads; the tests set what they need and nothing leaks in
_ENV_NAMES = (
    "WARNING",
    "CRITICAL",
    "COOLDOWN",
    "WARNING_SIGNAL",
    "CRITICAL_SIGNAL",
    "NODE_NAME",
    "POD_UID",
    "POD_NAME",
    "POD_NAMESPACE",
    "KUBECONFIG",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PRESSURED_") or name in _ENV_NAMES:
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """Commands call logging.basicConfig(force=True) on a stream the runner closes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def write(tmp_path: Path, text: str, name: str = "pressured.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def python_m_pressured(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSURED_")}
    for name in _ENV_NAMES:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "pressured", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------------- help and version


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == EXIT_OK
    assert result.stdout == f"pressured {__version__}\n"


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["diagnose"],
        ["config"],
        ["config", "check"],
        ["demo"],
        ["pprof"],
        ["pprof", "top"],
        ["pprof", "diff"],
    ],
    ids=lambda c: " ".join(c) or "pressured",
)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_on_every_command(command: list[str], flag: str) -> None:
    result = invoke(*command, flag)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith(f"Usage: pressured {' '.join(command)}".rstrip() + " ")


def test_top_level_help_lists_the_commands_and_the_original_options() -> None:
    out = invoke("-h").stdout
    for word in (
        "run",
        "diagnose",
        "config",
        "demo",
        "pprof",
        "--config",
        "--log-level",
        "--dry-run",
    ):
        assert word in out


def test_exit_codes_are_documented() -> None:
    import pressured.cli as cli

    doc = cli.__doc__ or ""
    for code in (EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG):
        assert f"\n  {code}  " in doc


# ---------------------------------------------------------------------- config check

GOOD = (
    "thresholds:\n  warn_percent: 60\n"
    "actions:\n  - type: log\n  - {type: signal, processes: oldest}\n"
    "  - {type: webhook, url: 'http://127.0.0.1:9/hook', format: oomhero}\n"
)


def test_config_check_prints_values_and_origins(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"PRESSURED_CRITICAL_PERCENT": "95", "COLUMNS": "250"}
    result = invoke("config", "check", path, env=env)
    assert result.exit_code == EXIT_OK, result.output
    assert f"effective configuration ({path})" in result.stdout
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 3
    }
    assert rows["thresholds.warn_percent"] == ["60", f"file:{path}"]
    assert rows["thresholds.critical_percent"] == ["95.0", "env:PRESSURED_CRITICAL_PERCENT"]
    assert rows["thresholds.cooldown_seconds"] == ["60.0", "default"]
    assert rows["actions[0]"] == ['{"type": "log"}', f"file:{path}"]


def test_config_check_never_cuts_keys_on_a_narrow_terminal(tmp_path: Path) -> None:
    result = invoke("config", "check", write(tmp_path, GOOD), env={"COLUMNS": "80"})
    assert result.exit_code == EXIT_OK, result.output
    keys = [line.split("│")[1].strip() for line in result.stdout.splitlines() if "│" in line]
    assert "source.kubelet.poll_interval_ms" in keys
    assert "thresholds.predict_window_seconds" in keys
    assert not any("…" in k for k in keys)


def test_config_check_json(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = invoke("config", "check", path, "--json", env={"WARNING_SIGNAL": "SIGTERM"})
    assert result.exit_code == EXIT_OK, result.output
    rows = {r["key"]: (r["value"], r["from"]) for r in json.loads(result.stdout)}
    assert rows["thresholds.warn_percent"] == (60, f"file:{path}")
    assert rows["source.mode"] == ("local", "default")
    assert rows["actions[1]"] == (
        {"type": "signal", "processes": "oldest", "warn": "SIGTERM"},
        f"file:{path} + env:WARNING_SIGNAL",
    )
    assert rows["actions[2]"][0]["format"] == "oomhero"


def test_config_check_file_from_env_or_the_top_level_option(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: debug\n")
    for result in (
        invoke("config", "check", "--json", env={"PRESSURED_CONFIG": path}),
        invoke("-c", path, "config", "check", "--json"),
    ):
        assert result.exit_code == EXIT_OK, result.output
        rows = {r["key"]: r for r in json.loads(result.stdout)}
        assert rows["log_level"] == {"key": "log_level", "value": "debug", "from": f"file:{path}"}


def test_config_check_bad_file_lists_every_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "thresholds:\n  warn_precent: 60\nsource:\n  mode: lcoal\n  poll_interval_ms: fast\n",
    )
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "pressured: invalid configuration:",
        f"  thresholds.warn_precent: unknown key (in file:{path}) "
        "(did you mean 'thresholds.warn_percent'?)",
        "  source.mode: must be one of local, sidecar, node, cluster, got 'lcoal' "
        f"(from file:{path}) (did you mean 'local'?)",
        f"  source.poll_interval_ms: expected an integer, got 'fast' (from file:{path})",
    ]


def test_config_check_bad_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  mode: [local\n")
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    assert f"  {path}:3:1: invalid YAML:" in result.stderr


def test_config_check_unknown_action_type(tmp_path: Path) -> None:
    path = write(tmp_path, "actions:\n  - type: log\n  - type: singal\n")
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    line = result.stderr.splitlines()[1]
    assert line.startswith("  actions[1].type: unknown action 'singal'; known: ")
    known = line.split("known: ")[1].split(" (")[0].split(", ")
    assert {"log", "signal", "exec", "webhook"} <= set(known)
    assert line.endswith("(did you mean 'signal'?)")


def test_config_check_reports_each_bad_action_option(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "actions:\n  - {type: signal, warn: SIGFOO}\n  - {type: exec, command: ''}\n"
        "  - {type: webhook, url: 'ftp://x/y'}\n",
    )
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    errors = result.stderr.splitlines()[1:]
    assert errors == [
        "  actions[0].warn: not a signal name: 'SIGFOO' (e.g. SIGUSR1)",
        "  actions[1].command: must not be empty, got ''",
        "  actions[2].url: must be an http(s) URL with a host, got 'ftp://x/y'",
    ]


def test_config_check_numbers_actions_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "actions:\n  - {type: k8s-event}\n  - {type: evict, max_eta_seconds: -1}\n"
        "  - {type: signal, processes: some}\n",
    )
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    errors = result.stderr.splitlines()[1:]
    # local mode has no Kubernetes client: those actions cannot work here
    assert errors[0].startswith("  actions[0]: k8s-event needs a Kubernetes mode")
    assert errors[1].startswith("  actions[1]: evict needs a Kubernetes mode")
    assert errors[2] == "  actions[2].processes: must be 'all' or 'oldest', got 'some'"


def test_config_check_validates_kubernetes_actions_without_a_cluster(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "source: {mode: node}\nactions:\n  - {type: k8s-event}\n"
        "  - {type: evict, max_eta_seconds: -1}\n",
    )
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.splitlines()[1:] == [
        "  actions[1].max_eta_seconds: expected a positive number (got -1.0)"
    ]


def test_config_check_does_not_create_the_events_file(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    path = write(tmp_path, f"events_out: {events}\n")
    assert invoke("config", "check", path).exit_code == EXIT_OK
    assert not events.exists()


def test_config_check_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    result = invoke("config", "check", path)
    assert result.exit_code == EXIT_CONFIG
    assert f"  {path}: cannot read config file: No such file or directory" in result.stderr


# ---------------------------------------------------------------------- diagnose


def cgroup_v2(
    root: Path,
    name: str,
    *,
    current: int,
    limit: int | None,
    inactive_file: int = 0,
    pids: tuple[int, ...] = (),
    oom_kill: int = 0,
    psi: str | None = None,
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "cgroup.controllers").write_text("memory\n")
    (d / "memory.current").write_text(f"{current}\n")
    (d / "memory.max").write_text("max\n" if limit is None else f"{limit}\n")
    (d / "memory.stat").write_text(
        f"anon {current - inactive_file}\ninactive_file {inactive_file}\n"
    )
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    events = f"low 0\nhigh 0\nmax 3\noom {oom_kill}\noom_kill {oom_kill}\noom_group_kill 0\n"
    (d / "memory.events").write_text(events)
    (d / "memory.events.local").write_text(events)
    if psi is not None:
        (d / "memory.pressure").write_text(psi)
    return d


@pytest.fixture
def v2_tree(tmp_path: Path) -> Path:
    """A fake cgroup v2 root with the memory controller and three limited cgroups."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cgroup_v2(
        root,
        "kubepods/pod-a/app",
        current=900 * MiB,
        limit=1000 * MiB,
        inactive_file=100 * MiB,
        pids=(os.getpid(),),
        oom_kill=2,
        psi="some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\n"
        "full avg10=4.25 avg60=1.00 avg300=0.50 total=65432\n",
    )
    cgroup_v2(root, "kubepods/pod-b/app", current=100 * MiB, limit=1000 * MiB)
    cgroup_v2(root, "system.slice/unlimited", current=50 * MiB, limit=None)
    (root / "not-a-cgroup").mkdir()
    return root


def diagnose_json(tmp_path: Path, root: Path, *extra: str) -> list[dict[str, object]]:
    cfg = write(tmp_path, f"source:\n  cgroup:\n    path: {root}\n  machine: false\n")
    result = invoke("diagnose", "-c", cfg, "--json", "--interval", "0", *extra)
    assert result.exit_code == EXIT_OK, result.output
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_diagnose_json_rows_sorted_by_headroom(tmp_path: Path, v2_tree: Path) -> None:
    rows = diagnose_json(tmp_path, v2_tree)
    assert [r["cgroup"] for r in rows] == [
        str(v2_tree / "kubepods/pod-a/app"),
        str(v2_tree / "kubepods/pod-b/app"),
    ]
    a = rows[0]
    assert a["usage_bytes"] == 900 * MiB
    assert a["working_set_bytes"] == 800 * MiB  # usage - inactive_file
    assert a["limit_bytes"] == 1000 * MiB
    assert a["percent"] == 80.0
    assert a["headroom_bytes"] == 200 * MiB
    assert a["growth_bytes_per_s"] == 0.0
    assert a["eta_seconds"] is None
    assert a["psi_some_avg10"] == 12.5
    assert a["psi_full_avg10"] == 4.25
    assert a["oom_kill"] == 2
    top = a["top_processes"]
    assert isinstance(top, list) and len(top) == 1
    assert top[0]["pid"] == os.getpid()
    assert top[0]["comm"] == Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    b = rows[1]
    assert b["percent"] == 10.0
    assert b["psi_some_avg10"] is None
    assert b["top_processes"] == []


def test_diagnose_shows_the_oom_risk_beside_the_working_set_and_kills_since_boot(
    tmp_path: Path, v2_tree: Path
) -> None:
    from pressured.kills.journal import JOURNAL_FILE, boot_id

    # 700 MiB of it page cache: a working set of 80 %, an OOM risk of 20 %
    job = cgroup_v2(v2_tree, "batch/job", current=900 * MiB, limit=1000 * MiB, pids=(os.getpid(),))
    (job / "memory.stat").write_text(
        f"anon {200 * MiB}\nfile {700 * MiB}\nshmem 0\nactive_file {600 * MiB}\n"
        f"inactive_file {100 * MiB}\nkernel 0\n"
    )
    state = tmp_path / "state"
    state.mkdir()
    kills = [
        {
            "boot_id": boot_id(),
            "cgroup": str(job),
            "pid": 11,
            "comm": "job",
            "time": "t1",
            "warned_seconds_before": 4.5,
        },
        {
            "boot_id": "an-earlier-boot",
            "cgroup": str(job),
            "pid": 10,
            "comm": "job",
            "time": "t0",
            "warned_seconds_before": None,
        },
    ]
    (state / JOURNAL_FILE).write_text("".join(json.dumps(k) + "\n" for k in kills))
    cfg = write(
        tmp_path,
        f"source:\n  cgroup:\n    paths: [{job}]\n  machine: false\nstate_dir: {state}\n",
    )
    result = invoke("diagnose", "-c", cfg, "--json", "--interval", "0")
    assert result.exit_code == EXIT_OK, result.output
    (row,) = json.loads(result.stdout)
    assert (row["working_set_bytes"], row["unreclaimable_bytes"]) == (800 * MiB, 200 * MiB)
    assert (row["working_set_percent"], row["unreclaimable_percent"]) == (80.0, 20.0)
    assert (row["decided_by"], row["percent"], row["headroom_bytes"]) == (
        "unreclaimable",
        20.0,
        800 * MiB,
    )
    assert row["unreclaimable"] == {"anon": 200 * MiB, "shmem": 0, "file_locked": 0, "kernel": 0}
    assert row["kills_since_boot"] == [
        {"time": "t1", "pid": 11, "comm": "job", "warned_seconds_before": 4.5, "limit_scope": None}
    ]
    (me,) = row["top_by_rss"]
    assert me["pid"] == os.getpid() and me["rss_bytes"] > 0 and me["oom_score"] >= 0
    # the table says it too
    result = invoke("diagnose", "-c", cfg, "--interval", "0")
    assert result.exit_code == EXIT_OK, result.output
    assert "kills since boot" in result.stdout and "4.5s" in result.stdout


def test_diagnose_machine_row_ranks_every_process_of_the_machine(
    tmp_path: Path, v2_tree: Path
) -> None:
    # the real /proc: the machine row's processes are the machine's, not a cgroup's
    cfg = write(tmp_path, f"source:\n  cgroup:\n    path: {v2_tree}\n  machine: true\n")
    result = invoke("diagnose", "-c", cfg, "--json", "--interval", "0")
    assert result.exit_code == EXIT_OK, result.output
    (machine,) = [r for r in json.loads(result.stdout) if r["cgroup"] == "machine"]
    by_score, by_rss = machine["top_processes"], machine["top_by_rss"]
    assert len(by_score) == len(by_rss) == 3  # the default top
    scores = [p["oom_score"] for p in by_score]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    sizes = [p["rss_bytes"] or 0 for p in by_rss]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0
    # more than the one process the fake tree's cgroups hold
    assert {p["pid"] for p in by_score + by_rss} - {os.getpid()}


def test_diagnose_keeps_a_row_whose_psi_file_is_malformed(tmp_path: Path, v2_tree: Path) -> None:
    (v2_tree / "kubepods/pod-b/app/memory.pressure").write_text("bogus line\n")
    rows = diagnose_json(tmp_path, v2_tree)
    b = rows[1]
    assert b["cgroup"] == str(v2_tree / "kubepods/pod-b/app")
    assert b["percent"] == 10.0
    assert b["psi_some_avg10"] is None


def test_diagnose_only_the_named_cgroups(tmp_path: Path, v2_tree: Path) -> None:
    rows = diagnose_json(tmp_path, v2_tree, "--cgroup", str(v2_tree / "kubepods/pod-b/app"))
    assert [r["cgroup"] for r in rows] == [str(v2_tree / "kubepods/pod-b/app")]


def test_diagnose_table(tmp_path: Path, v2_tree: Path) -> None:
    cfg = write(tmp_path, f"source:\n  cgroup:\n    path: {v2_tree}\n  machine: false\n")
    result = invoke("diagnose", "-c", cfg, "--interval", "0")
    assert result.exit_code == EXIT_OK, result.output
    assert "pressured diagnose (sorted by headroom)" in result.stdout
    assert "80.0" in result.stdout and "10.0" in result.stdout


def test_diagnose_missing_cgroup_is_a_runtime_error(tmp_path: Path, v2_tree: Path) -> None:
    cfg = write(tmp_path, f"source:\n  cgroup:\n    path: {v2_tree}\n")
    missing = str(v2_tree / "kubepods/pod-z")
    result = invoke("diagnose", "-c", cfg, "--interval", "0", "--cgroup", missing)
    assert result.exit_code == EXIT_RUNTIME
    assert result.stderr == f"pressured: {missing}: no such cgroup directory\n"


def test_diagnose_without_a_memory_controller(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io pids\n")
    cfg = write(tmp_path, f"source:\n  cgroup:\n    path: {root}\n")
    result = invoke("diagnose", "-c", cfg, "--interval", "0")
    assert result.exit_code == EXIT_RUNTIME
    assert result.stderr.startswith(f"pressured: {root}: no memory controller found")


def test_diagnose_relative_cgroup_is_a_config_error() -> None:
    result = invoke("diagnose", "--cgroup", "kubepods/pod-a", "--interval", "0")
    assert result.exit_code == EXIT_CONFIG
    assert "source.cgroup.paths[0]: must be an absolute path, got 'kubepods/pod-a'" in result.stderr


def test_diagnose_negative_interval_is_a_usage_error() -> None:
    result = invoke("diagnose", "--interval", "-1")
    assert result.exit_code == EXIT_CONFIG
    assert "--interval" in result.stderr


# ---------------------------------------------------------------------- run and the original form


def test_original_invocation_with_a_bad_file_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "thresholds:\n  warn_precent: 60\n")
    result = invoke("-c", path, "-l", "debug", "-d")
    assert result.exit_code == EXIT_CONFIG
    assert "thresholds.warn_precent: unknown key" in result.stderr
    done = python_m_pressured("-c", path, "-l", "debug", "-d", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG
    assert "did you mean 'thresholds.warn_percent'?" in done.stderr


def test_bad_log_level_flag_exits_2() -> None:
    result = invoke("run", "-l", "loud", "--no-metrics")
    assert result.exit_code == EXIT_CONFIG
    assert "log_level: must be one of debug, info, warning, error, got 'loud'" in result.stderr


def test_run_with_a_relative_cgroup_exits_2() -> None:
    result = invoke("run", "--cgroup", "pod-a", "--no-metrics")
    assert result.exit_code == EXIT_CONFIG
    assert "source.cgroup.paths[0]: must be an absolute path, got 'pod-a'" in result.stderr


def test_run_with_a_missing_cgroup_exits_1_naming_it(tmp_path: Path, v2_tree: Path) -> None:
    missing = str(v2_tree / "kubepods/pod-z")
    cfg = write(tmp_path, f"source:\n  cgroup:\n    path: {v2_tree}\n")
    done = python_m_pressured(
        "run", "-c", cfg, "--cgroup", missing, "--no-metrics", "--run-for", "5", cwd=tmp_path
    )
    assert done.returncode == EXIT_RUNTIME, done.stderr
    assert done.stderr.splitlines()[-1] == f"pressured: {missing}: no such cgroup directory"
    assert done.stdout == ""


def test_run_refuses_a_bad_action_before_starting(tmp_path: Path, v2_tree: Path) -> None:
    cfg = write(
        tmp_path,
        f"source:\n  cgroup:\n    path: {v2_tree}\n"
        "actions:\n  - {type: webhook, url: 'http://h', retries: 99}\n",
    )
    done = python_m_pressured("run", "-c", cfg, "--no-metrics", "--run-for", "5", cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert done.stderr.splitlines() == [
        "pressured: invalid configuration:",
        "  actions[0].retries: must be between 0 and 10, got 99",
    ]  # and nothing else: the daemon never started


def _commands() -> list[list[str]]:
    """Every command and group path of the app, found by walking click's tree."""
    import typer

    found: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            if not sub.hidden:
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_help_has_real_metavars_and_examples() -> None:
    commands = _commands()
    assert ["top"] in commands and ["diagnose"] in commands and ["pprof", "top"] in commands
    for path in commands:
        out = invoke(*path, "--help", env={"COLUMNS": "200"})
        assert out.exit_code == EXIT_OK, (path, out.output)
        assert re.search(r"<[a-z][a-z \[\]|,]*>", out.output) is None, (path, out.output)
        assert "Examples:" in out.output, (path, out.output)


def test_the_exit_codes_are_listed_in_the_top_help() -> None:
    out = invoke("--help", env={"COLUMNS": "200"}).output
    for code in (EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG):
        assert re.search(rf"^\s+{code}\s+\S", out, re.MULTILINE), out
    assert "Exit status:" in out
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for code in (EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG):
        assert f"| {code} |" in readme


def test_namespace_without_cluster_is_a_usage_error() -> None:
    out = invoke("diagnose", "-n", "pressured")
    assert out.exit_code == EXIT_CONFIG
    assert "only with --cluster" in out.output


def test_a_bad_since_is_a_usage_error() -> None:
    out = invoke("diagnose", "--cluster", "--since", "soon")
    assert out.exit_code == EXIT_CONFIG
    assert "--since: not a duration" in out.output


def test_top_without_a_daemon_url_scheme_is_a_usage_error() -> None:
    out = invoke("top", "--url", "127.0.0.1:9000")
    assert out.exit_code == EXIT_CONFIG
    assert "expected http://HOST:PORT" in out.output


def test_top_needs_a_terminal() -> None:
    out = invoke("top", "--url", "http://127.0.0.1:9")
    assert out.exit_code == EXIT_RUNTIME
    assert "needs a terminal" in out.output
