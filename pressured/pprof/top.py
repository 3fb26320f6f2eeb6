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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from pressured.pprof.decode import Profile, pruned_stack

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
    profile: Profile

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
    idx = profile.sample_index(sample_index)
    vtype = profile.sample_types[idx]
    n_nodes = len(profile._node_names)
    flat = [0] * n_nodes
    cum = [0] * n_nodes
    loc_nodes = profile._loc_nodes
    frames_of = loc_nodes.__getitem__
    prune, beneath = profile._prune, profile._prune_beneath
    pruning = bool(prune or beneath)
    total = 0
    for s in profile._samples:
        v = s.value[idx]
        if not v:
            continue
        total += abs(v)
        locs: Sequence[int] = s.location_id
        if pruning:
            locs = pruned_stack(list(locs), prune, beneath)
        if not locs:
            continue
        flat[loc_nodes[locs[0]][0]] += v
        for node in set(chain.from_iterable(map(frames_of, locs))):
            cum[node] += v

    present = [i for i in range(n_nodes) if flat[i] or cum[i]]
    cutoff = abs(int(sum(flat[i] for i in present) * node_fraction))
    kept = [i for i in present if abs(cum[i]) >= cutoff]
    names = profile._node_names
    if sort_cum:
        kept.sort(key=lambda i: (-abs(cum[i]), names[i], -abs(flat[i]), i))
    else:
        kept.sort(key=lambda i: (-abs(flat[i]), names[i], -abs(cum[i]), i))
    shown = kept[:n] if n > 0 else kept
    edge_cutoff = abs(int(sum(flat[i] for i in present) * edge_fraction))
    labels = _inline_labels(profile, idx, shown, edge_cutoff)

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
        source=profile.source,
        sample_type=vtype.type,
        unit=vtype.unit,
        total=total,
        rows=tuple(rows),
        nodes=len(kept),
        dropped_nodes=len(present) - len(kept),
        node_fraction=node_fraction,
        sort_cum=sort_cum,
        profile=profile,
    )


def _inline_labels(
    profile: Profile, idx: int, shown: list[int], edge_cutoff: int
) -> dict[int, str]:
    # report.TextItems labels a row "(inline)" when its incoming call edges are inline ones, and
    # "(partial-inline)" when some are. As in graph.newGraph rebuilt over the shown nodes: an
    # edge joins consecutive shown frames of a sample (root to leaf, hidden frames skipped), it is
    # inline when the callee is an inner Line of its Location, counted once per sample (the first
    # occurrence decides), stays inline only if it always is, and edges lighter than the cutoff
    # are dropped (TrimLowFrequencyEdges).
    kept = set(shown)
    kept_frames: dict[int, tuple[tuple[int, bool], ...]] = {}
    for lid, frames in profile._loc_nodes.items():
        last = len(frames) - 1
        kept_frames[lid] = tuple(
            (frames[k], k != last) for k in range(last, -1, -1) if frames[k] in kept
        )
    frames_of = kept_frames.__getitem__
    prune, beneath = profile._prune, profile._prune_beneath
    pruning = bool(prune or beneath)
    weight: dict[tuple[int, int], int] = {}
    inline: dict[tuple[int, int], bool] = {}
    for s in profile._samples:
        v = s.value[idx]
        if not v:
            continue
        locs: Sequence[int] = s.location_id
        if pruning:
            locs = pruned_stack(list(locs), prune, beneath)
        stack = list(chain.from_iterable(map(frames_of, reversed(locs))))
        if len(stack) < 2:
            continue
        seen: dict[tuple[int, int], bool] = {}
        parent = stack[0][0]
        for node, is_inline in stack[1:]:
            if node != parent:
                seen.setdefault((parent, node), is_inline)
            parent = node
        for edge, is_inline in seen.items():
            weight[edge] = weight.get(edge, 0) + v
            inline[edge] = inline.get(edge, True) and is_inline
    labels: dict[int, str] = {}
    partial: set[int] = set()
    for edge, w in weight.items():
        if abs(w) < edge_cutoff:
            continue
        callee = edge[1]
        if inline[edge]:
            labels[callee] = "inline"
        else:
            partial.add(callee)
    return {node: "partial-inline" if node in partial else "inline" for node in labels}


def percent_of(value: int, total: int) -> float:
    """|value| as a percentage of total (0 when the total is 0)."""
    return abs(value / total) * 100 if total else 0.0


def summarize_top(result: TopResult, k: int = 3) -> list[dict[str, Any]]:
    """The first ``k`` rows as plain data for events (``event.extra["pprof_top"]``)."""
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
        for r in result.rows[:k]
    ]
