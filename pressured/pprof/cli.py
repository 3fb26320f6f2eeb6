"""``pressured pprof``: read Go heap profiles (files or /debug/pprof URLs) on the command line.

    pressured pprof top FILE|URL [-n 20] [--sample-index NAME] [--cum] [--json]
    pressured pprof diff BASE NEW [-n 20] [--sample-index NAME] [--cum] [--json]

The numbers and the layout are those of ``go tool pprof -top -nodecount=N -sample_index=NAME``
(see pressured.pprof.top and .format); ``diff`` those of ``go tool pprof -top -base BASE NEW``
(pressured.pprof.diff): what NEW holds more than BASE per function, negative where it holds less.
pressured/cli.py mounts this app with ``app.add_typer(pprof_app, name="pprof")``.

The profile is decoded and analysed in a worker process (pressured.pprof.worker) that is
killed past ``--max-seconds`` or ``--max-memory``, for a file as for a URL: a file is often a
dump the heapdump action stored from a pod, as hostile as the pod that served it, and the worker
costs about 0.1 s. The limits are roomier than the daemon's (a person is waiting, and can raise
them for a profile known to be big).

Exit status:
    0   the report was printed
    1   bad input: a file that cannot be read, a download that failed, data that is not a pprof
        profile, an unknown sample index (the message names the input and lists what exists),
        two profiles of different sample types (diff), an analysis killed at its limits
    2   bad usage: unknown option, missing argument (typer's own)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

import typer

from pressured.errors import PprofError
from pressured.pprof.fetch import read_source
from pressured.pprof.worker import Limits, ProfileLimitError, TopReport, run_diff, run_top

pprof_app = typer.Typer(
    help="Analyse Go pprof heap profiles (files or /debug/pprof URLs).",
    no_args_is_help=True,
    add_completion=False,
)


# The options both commands take, as go tool pprof's flags of the same names
NodeCount = Annotated[
    int, typer.Option("-n", "--nodecount", metavar="N", help="rows to show (0: all)", min=0)
]
SampleIndex = Annotated[
    str | None,
    typer.Option(
        "--sample-index",
        metavar="TYPE",
        envvar="PRESSURED_PPROF_SAMPLE_INDEX",
        help="sample type: inuse_space (heap default), alloc_space, inuse_objects, "
        "alloc_objects, or a number",
    ),
]
Cum = Annotated[bool, typer.Option("--cum", help="sort by cumulative value")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object")]
NodeFraction = Annotated[
    float,
    typer.Option(
        "--node-fraction",
        metavar="FRACTION",
        min=0.0,
        max=1.0,
        help="hide functions whose cum is below this fraction of the total "
        "(go tool pprof's -nodefraction, same default)",
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.1, metavar="SECONDS", help="seconds the whole download of a URL may take"
    ),
]
MaxSeconds = Annotated[
    float,
    typer.Option(
        "--max-seconds",
        min=0.1,
        metavar="SECONDS",
        help="kill the analysis after this many seconds",
    ),
]
MaxMemory = Annotated[
    int,
    typer.Option("--max-memory", min=64, metavar="MIB", help="address space the analysis may use"),
]


@pprof_app.callback()
def _group() -> None:
    """Analyse Go pprof heap profiles (files or /debug/pprof URLs)."""
    # A callback keeps "top" a subcommand even while it is the only one.


@pprof_app.command(
    "top",
    epilog="\b\nExamples:\n"
    "  pressured pprof top heap.pb.gz\n"
    "  pressured pprof top --cum -n 10 http://127.0.0.1:6060/debug/pprof/heap\n"
    "  pressured pprof top --sample-index alloc_space --json heap.pb.gz",
)
def top_command(
    source: Annotated[
        str, typer.Argument(metavar="FILE|URL", help="profile.proto file (gzip or raw) or URL")
    ],
    *,
    nodecount: NodeCount = 20,
    sample_index: SampleIndex = None,
    cum: Cum = False,
    as_json: AsJson = False,
    node_fraction: NodeFraction = 0.005,
    timeout: Timeout = 30.0,
    max_seconds: MaxSeconds = 60.0,
    max_memory: MaxMemory = 2048,
) -> None:
    """Per-function flat and cum values, as `go tool pprof -top` prints them."""

    def analyse(limits: Limits) -> TopReport:
        data = read_source(source, timeout_s=timeout)
        return run_top(
            data,
            source,
            sample_index=sample_index,
            n=nodecount,
            sort_cum=cum,
            node_fraction=node_fraction,
            limits=limits,
        )

    _report(analyse, Limits(seconds=max_seconds, memory_mib=max_memory), as_json)


@pprof_app.command(
    "diff",
    epilog="\b\nExamples:\n"
    "  pressured pprof diff heap-1.pb.gz heap-2.pb.gz\n"
    "  pressured pprof diff --cum -n 10 heap-1.pb.gz http://127.0.0.1:6060/debug/pprof/heap\n"
    "  pressured pprof diff --sample-index inuse_objects --json heap-1.pb.gz heap-2.pb.gz",
)
def diff_command(
    base: Annotated[
        str, typer.Argument(metavar="BASE", help="the earlier profile (file or URL), subtracted")
    ],
    new: Annotated[str, typer.Argument(metavar="NEW", help="the later profile (file or URL)")],
    *,
    nodecount: NodeCount = 20,
    sample_index: SampleIndex = None,
    cum: Cum = False,
    as_json: AsJson = False,
    node_fraction: NodeFraction = 0.005,
    timeout: Timeout = 30.0,
    max_seconds: MaxSeconds = 60.0,
    max_memory: MaxMemory = 2048,
) -> None:
    """What NEW holds more (or less) than BASE per function, as `go tool pprof -top -base`."""

    def analyse(limits: Limits) -> TopReport:
        base_data = read_source(base, timeout_s=timeout)
        new_data = read_source(new, timeout_s=timeout)
        return run_diff(
            base_data,
            base,
            new_data,
            new,
            sample_index=sample_index,
            n=nodecount,
            sort_cum=cum,
            node_fraction=node_fraction,
            limits=limits,
        )

    _report(analyse, Limits(seconds=max_seconds, memory_mib=max_memory), as_json)


def _report(analyse: Callable[[Limits], TopReport], limits: Limits, as_json: bool) -> None:
    try:
        report = analyse(limits)
    except ProfileLimitError as exc:
        typer.echo(
            f"error: {exc}; a profile this big needs a larger --max-seconds or --max-memory",
            err=True,
        )
        raise typer.Exit(1) from exc
    except PprofError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(report.data, indent=2))
    else:
        typer.echo(report.text, nl=False)
