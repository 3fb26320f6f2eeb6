"""pprof's top of the difference between two profiles, as `go tool pprof -top -base BASE NEW`.

    base, new = load_diff(base_bytes, "heap-1.pb.gz", new_bytes, "heap-2.pb.gz")
    result = diff(base, new, "inuse_space", n=20)    # a TopResult: rows may be negative
    print(format_top(result))                        # the text of go tool pprof -top -base

What go tool pprof does (internal/driver/fetch.go, profile/merge.go), and so this module:

- the base's values are negated and both profiles merged: samples with the same stack (locations
  compared by address in their mapping, mapping, and lines) and the same labels become one, and
  one whose values all sum to zero is dropped;
- the merged profile is pruned with the newer profile's drop_frames/keep_frames;
- flat and cum are then those of one profile: new minus base per function, negative where the
  function holds less than before; the total (the base of every percentage) is the sum of the
  absolute values of the merged samples;
- the header: the newer profile's main binary, the earliest time, the summed durations.

Profiles of different sample types or period types cannot be compared: a PprofError names both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from pressured.errors import PprofError
from pressured.pprof.decode import Profile, ValueType, load_profile
from pressured.pprof.top import DEFAULT_EDGE_FRACTION, TopResult, rank


@dataclass(frozen=True)
class DiffHeader:
    """The merged profile's header lines (pprof's combineHeaders)."""

    main_file: str
    build_id: str
    comments: tuple[str, ...]
    time_nanos: int
    duration_nanos: int
    warnings: tuple[str, ...]


def load_diff(
    base_data: bytes | bytearray, base_source: str, new_data: bytes | bytearray, new_source: str
) -> tuple[Profile, Profile]:
    """Load a diff's two profiles: the base pruned with the newer profile's frame expressions."""
    new = load_profile(new_data, new_source, merge_keys=True)
    base = load_profile(
        base_data, base_source, merge_keys=True, frames=(new.drop_frames, new.keep_frames)
    )
    return base, new


def diff(
    base: Profile,
    new: Profile,
    sample_index: str | None = None,
    n: int = 20,
    sort_cum: bool = False,
    *,
    node_fraction: float = 0.0,
    edge_fraction: float = DEFAULT_EDGE_FRACTION,
) -> TopResult:
    """``new`` minus ``base`` per function (profiles from ``load_diff``), sorted as pprof sorts.

    Arguments as for ``top``; the sample index is looked up in ``new`` (the same types as the
    base's, or a PprofError).
    """
    import numpy as np  # noqa: PLC0415 - heavy, lazy

    from pressured.pprof.stacks import Stacks  # noqa: PLC0415

    _check_compatible(base, new)
    if base.merge_keys is None or new.merge_keys is None:
        raise ValueError("diff needs profiles loaded with merge_keys=True (load_diff)")
    idx = _merged(new, base).sample_index(sample_index)

    # one node space: the newer profile's nodes, then the base's that it does not have
    ids = {key: i for i, key in enumerate(new.node_keys)}
    names = list(new.node_names)
    base_nodes = np.empty(len(base.node_keys), dtype=np.int64)
    for i, key in enumerate(base.node_keys):
        nid = ids.get(key)
        if nid is None:
            nid = ids[key] = len(names)
            names.append(base.node_names[i])
        base_nodes[i] = nid

    new_stacks = Stacks.of(new, idx)
    base_stacks = Stacks.of(base, idx)
    negated = replace(base_stacks, values=-base_stacks.values)
    stacks = Stacks.join(new_stacks, negated, base_nodes, len(names))

    # merge the samples as pprof's Merge does; the sum of each merged sample decides the total,
    # and one that sums to zero is not counted at all
    group = _sample_groups(new, base)
    all_values = np.concatenate([new.table.values, -base.table.values])
    n_groups = int(group.max()) + 1 if len(group) else 0
    sums = np.zeros((n_groups, all_values.shape[1]), dtype=np.int64)
    np.add.at(sums, group, all_values)
    total = int(np.abs(sums[:, idx]).sum())
    values = np.where(sums[group, idx] != 0, stacks.values, 0)
    stacks = replace(stacks, values=values)

    return rank(
        stacks,
        names,
        total=total,
        source=f"{base.source} -> {new.source}",
        sample_type=new.sample_types[idx],
        header=_header(new, base),
        n=n,
        sort_cum=sort_cum,
        node_fraction=node_fraction,
        edge_fraction=edge_fraction,
    )


def _check_compatible(base: Profile, new: Profile) -> None:
    def types(vts: tuple[ValueType, ...]) -> str:
        return ", ".join(f"{t.type}/{t.unit}" for t in vts)

    if base.period_type != new.period_type:
        raise PprofError(
            f"{base.source}: cannot be the base of {new.source}: different period types "
            f"({types((base.period_type,)) if base.period_type else 'none'} and "
            f"{types((new.period_type,)) if new.period_type else 'none'})"
        )
    if base.sample_types != new.sample_types:
        raise PprofError(
            f"{base.source}: cannot be the base of {new.source}: different sample types "
            f"([{types(base.sample_types)}] and [{types(new.sample_types)}])"
        )


def _merged(new: Profile, base: Profile) -> Profile:
    # The default sample type of the merge is the first profile's, else the base's.
    if new.default_sample_type or not base.default_sample_type:
        return new
    return base


def _sample_groups(new: Profile, base: Profile) -> Any:
    """A merged-sample number for each sample of ``new``, then of ``base``.

    Stacks are compared by a 64-bit hash keyed with a random seed (arrays, not an object per
    sample): two different stacks would merge with a probability about n^2 / 2^64 (1e-7 for a
    million samples), and a profile's author cannot aim for it without the seed.
    """
    import numpy as np  # noqa: PLC0415

    loc_ids: dict[Any, int] = {}
    label_ids: dict[Any, int] = {}
    seed = np.frombuffer(os.urandom(16), dtype=np.uint64)
    k1, k2, k3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B1)
    parts = []
    for profile in (new, base):
        mk = profile.merge_keys
        assert mk is not None
        merged_loc = np.array(
            [loc_ids.setdefault(k, len(loc_ids)) for k in mk.locations], dtype=np.uint64
        )
        merged_label = np.array(
            [label_ids.setdefault(k, len(label_ids)) for k in mk.label_names], dtype=np.uint64
        )
        t = profile.table
        sizes = np.diff(t.loc_ptr)
        stack = np.zeros(len(t.values), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for lo in range(0, len(t.values), _HASH_CHUNK):  # bounded temporaries
                hi = min(lo + _HASH_CHUNK, len(t.values))
                first, end = int(t.loc_ptr[lo]), int(t.loc_ptr[hi])
                starts = t.loc_ptr[lo:hi] - first
                position = np.arange(end - first) - np.repeat(starts, sizes[lo:hi])
                h = _mix(merged_loc[t.locs[first:end]] * k1 + position.astype(np.uint64) * k2)
                filled = sizes[lo:hi] > 0
                if filled.any():
                    stack[lo:hi][filled] = np.add.reduceat(h + seed[0], starts[filled])
            stack = _mix(stack + sizes.astype(np.uint64) * k3 + seed[1])
        parts.append(np.stack([stack, merged_label[mk.labels]], axis=1))
    keys = np.concatenate(parts)
    _, groups = np.unique(keys, axis=0, return_inverse=True)
    return groups.reshape(-1)


_HASH_CHUNK = 1 << 16


def _mix(x: Any) -> Any:
    """splitmix64's finalizer over a uint64 array: every input bit moves every output bit."""
    import numpy as np  # noqa: PLC0415

    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _header(new: Profile, base: Profile) -> DiffHeader:
    time_nanos = 0
    for p in (new, base):  # pprof's combineHeaders, its treatment of a zero time included
        if time_nanos == 0 or p.time_nanos < time_nanos:
            time_nanos = p.time_nanos
    comments: list[str] = []
    for p in (new, base):
        comments.extend(c for c in p.comments if c not in comments)
    main = new if new.main_file or new.build_id or not base.main_file else base
    return DiffHeader(
        main_file=main.main_file,
        build_id=main.build_id,
        comments=tuple(comments),
        time_nanos=time_nanos,
        duration_nanos=new.duration_nanos + base.duration_nanos,
        warnings=(*new.warnings, *base.warnings),
    )
