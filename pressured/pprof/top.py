"""pprof's top: per-function flat and cum values of one sample type, sorted as pprof sorts them.

    result = top(profile, "alloc_space", n=20)        # sample type by name; None: the default
    event.extra["pprof_top"] = summarize_top(result)  # [{"function", "flat", "flat_pct", ...}]

The numbers are those of `go tool pprof -top -sample_index=NAME` (granularity "functions"),
ported from the pprof sources that ship with Go (internal/graph, internal/report):

- flat: the value of each sample whose leaf frame (Line[0] of Location[0]) is the function.
- cum: the value of each sample whose stack holds the function, counted once per sample even
  when it recurses.
- total: the sum of the absolute values of every sample; percentages are of that total.
- sample index: default_sample_type when the profile names one, else the last sample type
  (inuse_space for a Go heap profile); a number or a "inuse_"-prefixed legacy name also work.

The sums run over arrays (pressured.pprof.stacks), not over a Python object per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pressured.pprof.decode import Profile, ValueType

if TYPE_CHECKING:
    from pressured.pprof.stacks import Stacks

DEFAULT_NODE_FRACTION = 0.005
"""go tool pprof's default -nodefraction: nodes whose cum is below 0.5% of the total are dropped."""
DEFAULT_EDGE_FRACTION = 0.001
"""go tool pprof's default -edgefraction: lighter call edges are dropped (they decide labels)."""


@dataclass(frozen=True)
class TopRow:
    function: str
    flat: int
    flat_pct: float
    sum_pct: float
    cum: int
    cum_pct: float
    inline: str = ""
    """"inline" when every call into the function was inlined, "partial-inline" when some were."""


@dataclass(frozen=True)
class TopResult:
    source: str
    sample_type: str
    unit: str
    total: int
    rows: tuple[TopRow, ...]
    nodes: int
    """Functions left after the node fraction (the rows before the -n cut)."""
    dropped_nodes: int
    """Functions dropped by the node fraction."""
    node_fraction: float
    sort_cum: bool
    profile: Header

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sample_type": self.sample_type,
            "unit": self.unit,
            "total": self.total,
            "nodes": self.nodes,
            "dropped_nodes": self.dropped_nodes,
            "sort": "cum" if self.sort_cum else "flat",
            "warnings": list(self.profile.warnings),
            "rows": [
                {
                    "function": r.function,
                    "flat": r.flat,
                    "flat_pct": round(r.flat_pct, 4),
                    "sum_pct": round(r.sum_pct, 4),
                    "cum": r.cum,
                    "cum_pct": round(r.cum_pct, 4),
                    "inline": r.inline,
                }
                for r in self.rows
            ],
        }


def top(
    profile: Profile,
    sample_index: str | None = None,
    n: int = 20,
    sort_cum: bool = False,
    *,
    node_fraction: float = 0.0,
    edge_fraction: float = DEFAULT_EDGE_FRACTION,
) -> TopResult:
    """Per-function flat and cum of one sample type, sorted as pprof sorts them.

    ``n`` <= 0 keeps every row. ``node_fraction`` drops functions whose cum is below that
    fraction of the summed flat values, as ``go tool pprof -nodefraction`` does (its default is
    DEFAULT_NODE_FRACTION; 0 keeps everything). ``edge_fraction`` only decides the "(inline)"
    labels, as -edgefraction does: calls lighter than that fraction are not looked at.
    """
    from pressured.pprof.stacks import Stacks  # noqa: PLC0415 - numpy: heavy, lazy

    idx = profile.sample_index(sample_index)
    stacks = Stacks.of(profile, idx)
    vtype = profile.sample_types[idx]
    return rank(
        stacks,
        profile.node_names,
        total=stacks.total(),
        source=profile.source,
        sample_type=vtype,
        header=profile,
        n=n,
        sort_cum=sort_cum,
        node_fraction=node_fraction,
        edge_fraction=edge_fraction,
    )


class Header(Protocol):
    """What the report's header lines show (a Profile, or the merge of two for a diff)."""

    @property
    def main_file(self) -> str: ...
    @property
    def build_id(self) -> str: ...
    @property
    def comments(self) -> tuple[str, ...]: ...
    @property
    def time_nanos(self) -> int: ...
    @property
    def duration_nanos(self) -> int: ...
    @property
    def warnings(self) -> tuple[str, ...]: ...


def rank(
    stacks: Stacks,
    names: list[str],
    *,
    total: int,
    source: str,
    sample_type: ValueType,
    header: Header,
    n: int,
    sort_cum: bool,
    node_fraction: float,
    edge_fraction: float,
) -> TopResult:
    """flat and cum of ``stacks`` per node, cut and sorted as pprof does, into a TopResult."""
    import numpy as np  # noqa: PLC0415 - heavy, lazy

    flat_a, cum_a = stacks.flat_and_cum()
    present_a = np.flatnonzero((flat_a != 0) | (cum_a != 0))
    flat = dict(zip(present_a.tolist(), flat_a[present_a].tolist(), strict=True))
    cum = dict(zip(present_a.tolist(), cum_a[present_a].tolist(), strict=True))
    present = list(flat)
    flat_total = sum(flat.values())
    cutoff = abs(int(flat_total * node_fraction))
    kept = [i for i in present if abs(cum[i]) >= cutoff]
    if sort_cum:
        kept.sort(key=lambda i: (-abs(cum[i]), names[i], -abs(flat[i]), i))
    else:
        kept.sort(key=lambda i: (-abs(flat[i]), names[i], -abs(cum[i]), i))
    shown = kept[:n] if n > 0 else kept
    edge_cutoff = abs(int(flat_total * edge_fraction))
    labels = stacks.inline_labels(shown, edge_cutoff)

    rows: list[TopRow] = []
    flat_sum = 0
    for i in shown:
        flat_sum += flat[i]
        rows.append(
            TopRow(
                function=names[i],
                flat=flat[i],
                flat_pct=percent_of(flat[i], total),
                sum_pct=percent_of(flat_sum, total),
                cum=cum[i],
                cum_pct=percent_of(cum[i], total),
                inline=labels.get(i, ""),
            )
        )
    return TopResult(
        source=source,
        sample_type=sample_type.type,
        unit=sample_type.unit,
        total=total,
        rows=tuple(rows),
        nodes=len(kept),
        dropped_nodes=len(present) - len(kept),
        node_fraction=node_fraction,
        sort_cum=sort_cum,
        profile=header,
    )


def percent_of(value: int, total: int) -> float:
    """|value| as a percentage of total (0 when the total is 0)."""
    return abs(value / total) * 100 if total else 0.0


def summarize_top(result: TopResult, k: int = 3, grown_only: bool = False) -> list[dict[str, Any]]:
    """The first ``k`` rows as plain data for events (``event.extra["pprof_top"]``).

    ``grown_only``: of a diff, only the rows whose flat value grew (is positive).
    """
    rows = [r for r in result.rows if r.flat > 0] if grown_only else result.rows
    return [
        {
            "function": r.function,
            "flat": r.flat,
            "flat_pct": round(r.flat_pct, 2),
            "cum": r.cum,
            "cum_pct": round(r.cum_pct, 2),
            "unit": result.unit,
            "sample_type": result.sample_type,
        }
        for r in rows[:k]
    ]
