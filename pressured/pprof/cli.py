"""``pressured pprof``: read Go heap profiles (files or /debug/pprof URLs) on the command line.

    pressured pprof top FILE|URL [-n 20] [--sample-index NAME] [--cum] [--json]

The numbers and the layout are those of ``go tool pprof -top -nodecount=N -sample_index=NAME``
(see pressured.pprof.top and .format). pressured/cli.py mounts this app with
``app.add_typer(pprof_app, name="pprof")``.

Exit status:
    0   the report was printed
    1   bad input: a file that cannot be read, a download that failed, data that is not a pprof
        profile, an unknown sample index (the message names the input and lists what exists)
    2   bad usage: unknown option, missing argument (typer's own)
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pressured.errors import PprofError
from pressured.pprof.fetch import open_profile
from pressured.pprof.format import format_top
from pressured.pprof.top import top

pprof_app = typer.Typer(
    help="Analyse Go pprof heap profiles (files or /debug/pprof URLs).",
    no_args_is_help=True,
    add_completion=False,
)


@pprof_app.callback()
def _group() -> None:
    """Analyse Go pprof heap profiles (files or /debug/pprof URLs)."""
    # A callback keeps "top" a subcommand even while it is the only one.


@pprof_app.command("top")
def top_command(
    source: Annotated[
        str, typer.Argument(metavar="FILE|URL", help="profile.proto file (gzip or raw) or URL")
    ],
    *,
    nodecount: Annotated[
        int,
        typer.Option("-n", "--nodecount", help="rows to show (0: all)", min=0),
    ] = 20,
    sample_index: Annotated[
        str | None,
        typer.Option(
            "--sample-index",
            envvar="PRESSURED_PPROF_SAMPLE_INDEX",
            help="sample type: inuse_space (heap default), alloc_space, inuse_objects, "
            "alloc_objects, or a number",
        ),
    ] = None,
    cum: Annotated[bool, typer.Option("--cum", help="sort by cumulative value")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    node_fraction: Annotated[
        float,
        typer.Option(
            "--node-fraction",
            min=0.0,
            max=1.0,
            help="hide functions whose cum is below this fraction of the total "
            "(go tool pprof's -nodefraction, same default)",
        ),
    ] = 0.005,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, help="seconds the whole download of a URL may take"),
    ] = 30.0,
) -> None:
    """Per-function flat and cum values, as `go tool pprof -top` prints them."""
    try:
        profile = open_profile(source, timeout_s=timeout)
        result = top(profile, sample_index, n=nodecount, sort_cum=cum, node_fraction=node_fraction)
    except PprofError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except ImportError as exc:  # the protobuf runtime is an extra
        typer.echo(
            f"error: reading profiles needs the protobuf runtime ({exc}); install pressured[pprof]",
            err=True,
        )
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        typer.echo(format_top(result), nl=False)
