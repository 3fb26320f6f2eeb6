"""The typer app: thin commands, one library call each. Exit codes are decided only here.

EXIT STATUS
  0  success (the daemon stopped on SIGTERM/SIGINT, a check passed)
  1  a runtime failure: the watched cgroups or the kernel could not be used, a file unreadable,
     the API server or a daemon's endpoint unreachable
  2  bad usage or configuration: nothing was started
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any

import typer

from pressured.errors import ConfigError, PressuredError

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2

EXIT_STATUS = """\b
Exit status:
  0  success (the daemon stopped on SIGTERM/SIGINT, a check passed)
  1  runtime failure: cgroups, kernel, a file, the API server or a daemon unreachable
  2  bad usage or configuration: nothing was started"""


def examples(*lines: str) -> str:
    """A command's --help epilog: its examples, kept as written (click's \\b marker)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="pressured",
    help="Pre-OOM watcher: sleeps on kernel notifications, warns and acts before an OOM kill, "
    "and confirms every real kill.",
    epilog=examples(
        "pressured run -c /etc/pressured/config.yaml",
        "pressured diagnose --cluster -n pressured",
        "pressured top",
    )
    + "\n\n"
    + EXIT_STATUS,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(
    help="Check configuration.", context_settings={"help_option_names": ["-h", "--help"]}
)
app.add_typer(
    config_app,
    name="config",
    epilog=examples("pressured config check config.yaml", "pressured -c config.yaml config check"),
)


def _metavar_alone() -> None:
    """An argument with a metavar shows only it in --help (FILE, not FILE <str>), as an
    option does; typer shows the type's metavar after it, so each such argument gets a copy of
    its type that has none."""
    import copy  # noqa: PLC0415

    from typer.core import TyperArgument  # noqa: PLC0415

    init = TyperArgument.__init__

    def __init__(self: TyperArgument, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self.metavar:
            self.type = copy.copy(self.type)
            self.type.get_metavar = lambda param, ctx: ""  # type: ignore[method-assign]

    TyperArgument.__init__ = __init__  # type: ignore[method-assign]


_metavar_alone()


def _mount_pprof() -> None:
    from pressured.pprof.cli import pprof_app  # noqa: PLC0415

    app.add_typer(
        pprof_app,
        name="pprof",
        epilog=examples("pressured pprof top heap.pb.gz", "pressured pprof top --help"),
    )


_mount_pprof()

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "-c",
        "--config",
        envvar="PRESSURED_CONFIG",
        metavar="FILE",
        help="JSON or YAML config file.",
    ),
]
LogOpt = Annotated[
    str | None,
    typer.Option(
        "-l",
        "--log-level",
        metavar="LEVEL",
        help="debug, info, warning or error [env PRESSURED_LOG_LEVEL].",
    ),
]
DryOpt = Annotated[
    bool | None,
    typer.Option(
        "-d", "--dry-run", help="Log what actions would do, do nothing [env PRESSURED_DRY_RUN]."
    ),
]


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "httpcore", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"pressured: {message}", err=True)
    return typer.Exit(code)


def config_errors(exc: ConfigError) -> typer.Exit:
    """Print every problem, one per line, and return the exit for a bad configuration."""
    typer.echo("pressured: invalid configuration:", err=True)
    for p in exc.problems:
        typer.echo(f"  {p}", err=True)
    return typer.Exit(EXIT_CONFIG)


def _inherit(ctx: typer.Context, name: str, value: Any) -> Any:
    """A subcommand's option, else the same option given before the subcommand
    (`pressured -c cfg.yaml run` means what `pressured run -c cfg.yaml` does)."""
    if value is not None:
        return value
    parent = ctx.find_root().obj
    return parent.get(name) if isinstance(parent, dict) else None


def _load(config: str | None, flags: dict[str, Any]) -> Any:
    from pressured import config as config_mod  # noqa: PLC0415

    try:
        return config_mod.load(config, flags=flags)
    except ConfigError as exc:
        raise config_errors(exc) from None


class _NoCluster:
    """Stands in for the Kubernetes client while actions check their options: a check must
    not need the API server. Actions only keep the client at start, so nothing calls this."""

    def __getattr__(self, name: str) -> Any:
        raise PressuredError(f"the configuration check does not contact the cluster ({name})")


def _check_actions(cfg: Any) -> None:
    """Build every action as the daemon would, without side effects, and close it again:
    each validates its own options, so a bad one is exit 2 before anything has started."""
    from pressured.actions.base import ActionContext  # noqa: PLC0415
    from pressured.actions.registry import build_actions  # noqa: PLC0415

    ctx = ActionContext(
        dry_run=True,
        mode=cfg.mode,
        node_name=cfg.get("kubernetes.node_name"),
        proc_root=str(cfg.get("source.proc_root")),
        config=cfg.data,
        # local mode has no client, as in the daemon: Kubernetes actions must say so here too
        kube=None if cfg.mode == "local" else _NoCluster(),
        extra={"events_out": cfg.get("events_out")},
    )
    try:
        for action in build_actions(cfg, ctx):
            action.close()
    except ConfigError as exc:
        raise config_errors(exc) from None


def _run_daemon(config: str | None, flags: dict[str, Any], run_for: float | None) -> None:
    from pressured.daemon import Daemon  # noqa: PLC0415
    from pressured.kernel.procfs import own_start_usec  # noqa: PLC0415

    started = own_start_usec()
    cfg = _load(config, flags)
    setup_logging(str(cfg.get("log_level")))
    _check_actions(cfg)

    def reload() -> Any:
        from pressured import config as config_mod  # noqa: PLC0415

        return config_mod.load(config, flags=flags)

    try:
        daemon = Daemon(cfg, reload=reload, started_usec=started)
        code = daemon.run(run_for=run_for)
    except ConfigError as exc:
        raise config_errors(exc) from None
    except PressuredError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None
    except OSError as exc:
        raise fail(_os_error(exc), EXIT_RUNTIME) from None
    raise typer.Exit(code)


def _os_error(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)


def _version(value: bool) -> None:
    if value:
        from pressured import __version__  # noqa: PLC0415

        typer.echo(f"pressured {__version__}")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    dry_run: DryOpt = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """With no command, run the daemon (the original `pressured -c config.json -l debug -d`)."""
    ctx.obj = {"config": config, "log_level": log_level, "dry_run": dry_run}
    if ctx.invoked_subcommand is None:
        _run_daemon(config, {"log_level": log_level, "dry_run": dry_run}, None)


@app.command(
    epilog=examples(
        "pressured run                                  # this machine, embedded defaults",
        "pressured run --cgroup /sys/fs/cgroup/app -d   # one cgroup, actions only logged",
        "pressured run -c config.yaml --metrics-port 0  # any free port for /metrics",
        "kill -HUP $(pidof pressured)                   # reload the configuration",
    )
)
def run(  # noqa: PLR0917 - typer maps each option to a parameter
    ctx: typer.Context,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    dry_run: DryOpt = None,
    cgroup: Annotated[
        list[str] | None,
        typer.Option(
            "--cgroup",
            metavar="DIR",
            help="Watch this cgroup directory (v1 memory or v2); repeatable.",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode", metavar="MODE", help="local, sidecar, node or cluster [env PRESSURED_MODE]."
        ),
    ] = None,
    events_out: Annotated[
        str | None,
        typer.Option(
            "--events-out", metavar="FILE", help="Write event JSON lines here instead of stdout."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            metavar="PORT",
            help="Port of /metrics, /healthz and /v1/state (0: any free).",
        ),
    ] = None,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Do not serve metrics.")] = False,
    state_dir: Annotated[
        str | None,
        typer.Option("--state-dir", metavar="DIR", help="Keep kill counters here across restarts."),
    ] = None,
    run_for: Annotated[float | None, typer.Option("--run-for", hidden=True)] = None,
) -> None:
    """Run the watcher until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
    config = _inherit(ctx, "config", config)
    flags: dict[str, Any] = {
        "log_level": _inherit(ctx, "log_level", log_level),
        "dry_run": _inherit(ctx, "dry_run", dry_run),
        "source.cgroup.paths": list(cgroup) if cgroup else None,
        "source.mode": mode,
        "events_out": events_out,
        "metrics.port": metrics_port,
        "metrics.enabled": False if no_metrics else None,
        "state_dir": state_dir,
    }
    if cgroup:
        flags["source.machine"] = False
    _run_daemon(config, flags, run_for)


@app.command(
    epilog=examples(
        "pressured diagnose                         # this machine's cgroups",
        "pressured diagnose --cgroup /sys/fs/cgroup/app --json",
        "pressured diagnose --cluster -n pressured  # every node, through the API server",
        "pressured diagnose --cluster --since 15m --json | jq '.kills'",
    )
)
def diagnose(  # noqa: PLR0917 - typer maps each option to a parameter
    ctx: typer.Context,
    config: ConfigOpt = None,
    cgroup: Annotated[
        list[str] | None,
        typer.Option("--cgroup", metavar="DIR", help="Only these cgroups; repeatable."),
    ] = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.0,
            metavar="SECONDS",
            help="Seconds between the two readings (growth).",
        ),
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    top: Annotated[
        int,
        typer.Option("--top", min=0, metavar="N", help="Processes shown per cgroup by oom_score."),
    ] = 3,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="The whole cluster: every pressured pod's state, read through the API "
            "server's pods proxy (needs the chart's viewer Role).",
        ),
    ] = False,
    namespace: Annotated[
        str | None,
        typer.Option(
            "-n",
            "--namespace",
            metavar="NAMESPACE",
            help="With --cluster: where pressured runs (default: the kubeconfig's).",
        ),
    ] = None,
    selector: Annotated[
        str,
        typer.Option(
            "--selector",
            metavar="LABELS",
            help="With --cluster: the pressured pods' label selector.",
        ),
    ] = "app.kubernetes.io/name=pressured",
    since: Annotated[
        str,
        typer.Option(
            "--since", metavar="DURATION", help="With --cluster: kills this recent (90s, 15m, 1h)."
        ),
    ] = "1h",
) -> None:
    """One-shot table of the watched cgroups (or, with --cluster, of every node), sorted by
    headroom."""
    if not cluster and namespace is not None:
        raise fail("-n/--namespace: only with --cluster", EXIT_CONFIG)
    if cluster:
        _diagnose_cluster(ctx, config, namespace, selector, since, as_json)
        return
    from pressured.diagnose import diagnose as run_diagnose  # noqa: PLC0415
    from pressured.diagnose import render  # noqa: PLC0415

    flags: dict[str, Any] = {"source.cgroup.paths": list(cgroup) if cgroup else None}
    cfg = _load(_inherit(ctx, "config", config), flags)
    try:
        rows = run_diagnose(cfg, interval=interval, top=top)
    except ConfigError as exc:
        raise config_errors(exc) from None
    except PressuredError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None
    except OSError as exc:
        raise fail(_os_error(exc), EXIT_RUNTIME) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render(rows)


def _duration(text: str, where: str) -> float:
    from pressured.settings import Checker  # noqa: PLC0415

    check = Checker()
    value = check.duration(text, where, None)
    if value is None or check.problems:
        raise fail("; ".join(check.problems) or f"{where}: expected a duration", EXIT_CONFIG)
    return float(value)


def _diagnose_cluster(  # noqa: PLR0917
    ctx: typer.Context,
    config: str | None,
    namespace: str | None,
    selector: str,
    since: str,
    as_json: bool,
) -> None:
    from pressured.k8s.client import KubeClient  # noqa: PLC0415
    from pressured.k8s.cluster_view import gather, render  # noqa: PLC0415

    window = _duration(since, "--since")
    cfg = _load(_inherit(ctx, "config", config), {})
    try:
        kube = KubeClient.from_config(cfg.get("kubernetes"))
    except ConfigError as exc:
        raise config_errors(exc) from None
    try:
        view = gather(kube, namespace=namespace, selector=selector, since=window)
    except PressuredError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None
    finally:
        kube.close()
    if as_json:
        typer.echo(json.dumps(view.as_json(), indent=2))
    else:
        render(view)
    if not any(n["ok"] for n in view.nodes):
        raise typer.Exit(EXIT_RUNTIME)


@app.command(
    epilog=examples(
        "pressured top                                # the daemon of this machine's config",
        "pressured top --url http://127.0.0.1:9000    # a daemon's metrics port",
        "kubectl port-forward -n pressured pod/NAME 9000 & pressured top",
    )
)
def top(
    ctx: typer.Context,
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            envvar="PRESSURED_TOP_URL",
            help="The daemon's metrics endpoint (default: 127.0.0.1 and the config's "
            "metrics.port).",
        ),
    ] = None,
) -> None:
    """Live view of a running daemon, redrawn on its own wake-ups: usage against limit, growth,
    ETA, PSI, last events. Keys: s sort, r reverse, / filter, c clear, q quit."""
    from pressured.top import run_top  # noqa: PLC0415

    if url is None:
        cfg = _load(_inherit(ctx, "config", config), {})
        url = f"http://127.0.0.1:{cfg.get('metrics.port')}"
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise fail(f"--url: expected http://HOST:PORT (got {base!r})", EXIT_CONFIG)
    try:
        code = run_top(base)
    except OSError as exc:
        raise fail(_os_error(exc), EXIT_RUNTIME) from None
    raise typer.Exit(code)


@config_app.command(
    "check",
    epilog=examples(
        "pressured config check /etc/pressured/config.yaml",
        "PRESSURED_WARN_PERCENT=60 pressured config check config.yaml --json",
    ),
)
def config_check(
    ctx: typer.Context,
    file: Annotated[
        str | None,
        typer.Argument(metavar="FILE", help="Config file (default: PRESSURED_CONFIG)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the effective configuration and where each value came from, or the errors."""
    cfg = _load(_inherit(ctx, "config", file), {})
    _check_actions(cfg)
    rows = cfg.explain()
    if as_json:
        typer.echo(
            json.dumps(
                [{"key": k, "value": v, "from": o} for k, v, o in rows], indent=2, default=str
            )
        )
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"effective configuration{f' ({cfg.file})' if cfg.file else ''}")
    # keys and origins are what a reader greps for: never cut them, fold the values instead
    table.add_column("key", no_wrap=True, min_width=max((len(k) for k, _, _ in rows), default=3))
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for k, v, o in rows:
        table.add_row(k, json.dumps(v, default=str), o)
    Console().print(table)


@app.command(
    epilog=examples(
        "pressured demo",
        "pressured demo --limit-mib 256 --rate-mib 32",
    )
)
def demo(
    limit_mib: Annotated[
        int,
        typer.Option("--limit-mib", metavar="MIB", help="Memory limit of the demo cgroup."),
    ] = 128,
    rate_mib: Annotated[
        float, typer.Option("--rate-mib", metavar="MIB", help="Leak rate, MiB/s.")
    ] = 8.0,
) -> None:
    """Leak memory in a limited cgroup and watch pressured warn, act and confirm the kill."""
    from pressured.demo import DemoUnavailable, run_demo  # noqa: PLC0415

    setup_logging("warning")
    try:
        code = run_demo(limit_mib=limit_mib, rate_mib=rate_mib)
    except DemoUnavailable as exc:
        raise fail(f"demo not possible here: {exc}", EXIT_RUNTIME) from None
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
