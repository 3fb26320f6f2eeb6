"""The stacks of a profile's samples as arrays, and pprof's per-function sums over them.

    stacks = Stacks.of(profile, sample_index)
    flat, cum = stacks.flat_and_cum()                # int64 per node
    labels = stacks.inline_labels(shown, cutoff)     # {node: "inline" | "partial-inline"}

As pprof computes them (internal/graph, internal/report, profile/prune.go), with a sample's
stack first cut as drop_frames cuts it:

- flat: the value of each sample whose leaf frame (Line[0] of Location[0]) is the node;
- cum: the value of each sample whose stack holds the node, once per sample even when it
  recurses: the (sample, node) pairs are sorted by node (a radix sort: node ids fit 16 bits in
  any real profile) and each pair counted once;
- inline labels: over the shown nodes only, an edge joins consecutive shown frames of a sample
  (root to leaf, hidden frames skipped); it is inline when the callee is an inner Line of its
  Location, counted once per sample (the first occurrence, from the root, decides), stays
  inline only if it always is, and edges lighter than the cutoff are dropped
  (TrimLowFrequencyEdges).

Samples are expanded into frames CHUNK_FRAMES at a time, so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pressured.pprof.samples import ranges

if TYPE_CHECKING:
    from pressured.pprof.decode import Profile

CHUNK_ENTRIES = 1 << 19
"""Location entries of samples expanded at once (about 700k frames in a Go heap profile)."""


@dataclass(frozen=True)
class Stacks:
    """Samples reduced to one value each (0: not counted) and stacks of location indices."""

    values: Any  # int64 per sample
    loc_ptr: Any  # int64, n_samples + 1
    locs: Any  # int32 location indices, leaf first
    frame_ptr: Any  # int64, n_locations + 1
    frame_nodes: Any  # int32 node ids, innermost first
    frame_inner: Any  # bool: not the outermost Line of its location
    prune: Any  # bool per location
    prune_beneath: Any  # bool per location
    n_nodes: int

    @classmethod
    def of(cls, profile: Profile, idx: int) -> Stacks:
        t = profile.table
        return cls(
            values=np.ascontiguousarray(t.values[:, idx]),
            loc_ptr=t.loc_ptr,
            locs=t.locs,
            frame_ptr=profile.frame_ptr,
            frame_nodes=profile.frame_nodes,
            frame_inner=profile.frame_inner,
            prune=profile.prune,
            prune_beneath=profile.prune_beneath,
            n_nodes=len(profile.node_names),
        )

    @classmethod
    def join(cls, a: Stacks, b: Stacks, b_nodes: Any, n_nodes: int) -> Stacks:
        """The samples of both; ``b_nodes`` maps b's node ids to a's (``n_nodes`` in all)."""
        n_locs_a = len(a.frame_ptr) - 1
        return cls(
            values=np.concatenate([a.values, b.values]),
            loc_ptr=np.concatenate([a.loc_ptr[:-1], b.loc_ptr + a.loc_ptr[-1]]),
            locs=np.concatenate([a.locs, b.locs + np.int32(n_locs_a)]),
            frame_ptr=np.concatenate([a.frame_ptr[:-1], b.frame_ptr + a.frame_ptr[-1]]),
            frame_nodes=np.concatenate([a.frame_nodes, b_nodes[b.frame_nodes].astype(np.int32)]),
            frame_inner=np.concatenate([a.frame_inner, b.frame_inner]),
            prune=np.concatenate([a.prune, b.prune]),
            prune_beneath=np.concatenate([a.prune_beneath, b.prune_beneath]),
            n_nodes=n_nodes,
        )

    def total(self) -> int:
        """pprof's total: the sum of the absolute values."""
        return int(np.abs(self.values).sum())

    # ----------------------------------------------------------------------------------------

    def _counted(self) -> tuple[Any, Any, Any]:
        """(samples with a value and a stack left, their first and end location entries)."""
        sel = np.flatnonzero(self.values)
        start, end = self.loc_ptr[sel], self.loc_ptr[sel + 1]
        if self.prune.any() or self.prune_beneath.any():
            start = self._pruned_starts(start, end)
        left = start < end
        return sel[left], start[left], end[left]

    def _pruned_starts(self, start: Any, end: Any) -> Any:
        # pprof's Prune, scanning each stack from the root: frames before the first one that is
        # neither pruned nor pruned beneath are kept; the next flagged one then cuts the stack,
        # keeping itself when only what is beneath it is pruned.
        entry = ranges(start, end)
        sample = np.repeat(np.arange(len(start)), end - start)
        loc = self.locs[entry]
        flagged = self.prune[loc] | self.prune_beneath[loc]
        user = np.full(len(start), -1, dtype=np.int64)
        np.maximum.at(user, sample[~flagged], entry[~flagged])
        cand = flagged & (entry < user[sample])
        cut = np.full(len(start), -1, dtype=np.int64)
        np.maximum.at(cut, sample[cand], entry[cand])
        has = cut >= 0
        cut_loc = self.locs[np.where(has, cut, 0)] if len(self.locs) else cut
        cut = np.where(self.prune[cut_loc], cut + 1, cut) if len(self.locs) else cut
        return np.where(has, cut, start)

    def _frames(self, start: Any, end: Any, loc_filter: Any = None) -> tuple[Any, Any, Any]:
        """(sample position, frame index) of every frame of the stacks, leaf first."""
        entry = ranges(start, end)
        sample = np.repeat(np.arange(len(start), dtype=np.int64), end - start)
        loc = self.locs[entry]
        if loc_filter is not None:
            keep = loc_filter[loc]
            loc, sample = loc[keep], sample[keep]
        first, last = self.frame_ptr[loc], self.frame_ptr[loc + 1]
        frame = ranges(first, last)
        return np.repeat(sample, last - first), frame, loc

    def _chunks(self, start: Any, end: Any) -> list[slice]:
        sizes = np.cumsum(end - start)
        out: list[slice] = []
        lo = 0
        while lo < len(start):
            base = int(sizes[lo - 1]) if lo else 0
            hi = int(np.searchsorted(sizes, base + CHUNK_ENTRIES, side="right"))
            hi = max(hi, lo + 1)
            out.append(slice(lo, hi))
            lo = hi
        return out

    def flat_and_cum(self) -> tuple[Any, Any]:
        flat = np.zeros(self.n_nodes, dtype=np.int64)
        cum = np.zeros(self.n_nodes, dtype=np.int64)
        sel, start, end = self._counted()
        if not len(sel):
            return flat, cum
        values = self.values[sel]
        leaf = self.frame_nodes[self.frame_ptr[self.locs[start]]]
        np.add.at(flat, leaf, values)
        key_type = np.uint16 if self.n_nodes <= 1 << 16 else np.int64
        for part in self._chunks(start, end):
            sample, frame, _ = self._frames(start[part], end[part])
            nodes = self.frame_nodes[frame]
            # stable: within a node, samples stay in order, so repeats are neighbours
            order = np.argsort(nodes.astype(key_type), kind="stable")
            nodes, sample = nodes[order], sample[order]
            new_node = np.ones(len(nodes), dtype=bool)
            new_node[1:] = nodes[1:] != nodes[:-1]
            once = new_node.copy()
            once[1:] |= sample[1:] != sample[:-1]
            contrib = np.where(once, values[part][sample], 0)
            heads = np.flatnonzero(new_node)
            cum[nodes[heads]] += np.add.reduceat(contrib, heads)
        return flat, cum

    def inline_labels(self, shown: list[int], edge_cutoff: int) -> dict[int, str]:
        if not shown or len(self.frame_nodes) == 0:
            return {}
        is_shown = np.zeros(self.n_nodes, dtype=bool)
        is_shown[np.array(shown, dtype=np.int64)] = True
        frame_shown = is_shown[self.frame_nodes]
        loc_shown = np.logical_or.reduceat(frame_shown, self.frame_ptr[:-1])
        sel, start, end = self._counted()
        weight: dict[tuple[int, int], int] = {}
        inline: dict[tuple[int, int], bool] = {}
        for part in self._chunks(start, end):
            sample, frame, _ = self._frames(start[part], end[part], loc_shown)
            keep = frame_shown[frame]
            sample, frame = sample[keep], frame[keep]
            nodes = self.frame_nodes[frame].astype(np.int64)
            # leaf first: the parent of frame j is frame j + 1 of the same sample
            edge = (sample[:-1] == sample[1:]) & (nodes[:-1] != nodes[1:])
            j = np.flatnonzero(edge)
            if not len(j):
                continue
            key = nodes[j + 1] * self.n_nodes + nodes[j]
            e_sample = sample[j]
            e_inner = self.frame_inner[frame[j]]
            order = np.argsort(key, kind="stable")  # then by sample, then from leaf to root
            key, e_sample, e_inner = key[order], e_sample[order], e_inner[order]
            # the last of each (edge, sample) run is the occurrence nearest the root
            last = np.ones(len(key), dtype=bool)
            last[:-1] = (key[:-1] != key[1:]) | (e_sample[:-1] != e_sample[1:])
            key, e_sample, e_inner = key[last], e_sample[last], e_inner[last]
            w = self.values[sel[part]][e_sample]
            heads = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            sums = np.add.reduceat(w, heads)
            always = np.logical_and.reduceat(e_inner, heads)
            for k, s, a in zip(key[heads].tolist(), sums.tolist(), always.tolist(), strict=True):
                pair = divmod(k, self.n_nodes)
                weight[pair] = weight.get(pair, 0) + s
                inline[pair] = inline.get(pair, True) and a
        labels: dict[int, str] = {}
        partial: set[int] = set()
        for pair, w_sum in weight.items():
            if abs(w_sum) < edge_cutoff:
                continue
            callee = pair[1]
            if inline[pair]:
                labels[callee] = "inline"
            else:
                partial.add(callee)
        return {node: "partial-inline" if node in partial else "inline" for node in labels}
