"""Chains of deltas: shortest path between two versions over the deltas in a directory (a
reversible delta is also an edge backwards), and applying a chain through staged intermediates."""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airlock.delta.apply import ApplySummary, apply_delta
from airlock.delta.header import read_delta_header
from airlock.errors import AirlockError, DeltaFormatError
from airlock.fsutil import staging_dir
from airlock.names import CHAIN_STAGING_PREFIX

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ChainStep:
    path: Path
    reverse: bool
    from_version: str
    to_version: str


def _edges(delta_dir: Path) -> dict[str, list[ChainStep]]:
    edges: dict[str, list[ChainStep]] = {}
    for path in sorted(p for p in Path(delta_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            h = read_delta_header(path)
        except DeltaFormatError:
            continue  # not a delta (or a damaged one): not an edge
        edges.setdefault(h.from_version, []).append(ChainStep(path, False, h.from_version, h.to_version))
        if h.reversible:
            edges.setdefault(h.to_version, []).append(ChainStep(path, True, h.to_version, h.from_version))
    return edges


def identify_version(delta_dir: Path, model_dir: Path) -> str:
    """The version label a directory of deltas gives to ``model_dir``, found by its content id
    (every file hashed): the source of some delta, or the target of a reversible one."""
    from airlock.delta.inventory import FileInfo, content_id, hash_regions, model_paths

    files: dict[str, FileInfo] = {}
    for rel in model_paths(Path(model_dir)):
        size, sha, _ = hash_regions(Path(model_dir) / rel, [])
        files[rel] = FileInfo(size, sha)
    cid = content_id(files)
    for path in sorted(p for p in Path(delta_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            h = read_delta_header(path)
        except DeltaFormatError:
            continue
        if h.source_id == cid:
            return h.from_version
        if h.target_id == cid:
            return h.to_version
    raise AirlockError(f"{model_dir}: no delta in {delta_dir} starts from or leads to this content "
                       f"({cid[:23]}...)", path=str(model_dir), rule="delta-no-chain")


def find_chain_steps(delta_dir: Path, from_version: str, to_version: str, *,
                     forward_only: bool = False) -> list[ChainStep]:
    """Breadth-first search: the fewest deltas from ``from_version`` to ``to_version``; forward edges
    are preferred over reverse ones at equal length (``forward_only``: reverse edges are not used, as
    for a bundle, whose deltas a target applies forwards). Raises AirlockError when there is no path."""
    if from_version == to_version:
        return []
    edges = _edges(delta_dir)
    for v, steps in edges.items():
        steps.sort(key=lambda s: (s.reverse, s.path.name))
        if forward_only:
            edges[v] = [s for s in steps if not s.reverse]
    prev: dict[str, ChainStep] = {}
    seen = {from_version}
    queue = deque([from_version])
    while queue:
        v = queue.popleft()
        for step in edges.get(v, []):
            if step.to_version in seen:
                continue
            seen.add(step.to_version)
            prev[step.to_version] = step
            if step.to_version == to_version:
                chain = [step]
                while chain[0].from_version != from_version:
                    chain.insert(0, prev[chain[0].from_version])
                return chain
            queue.append(step.to_version)
    raise AirlockError(f"{delta_dir}: no chain of deltas leads from {from_version} to {to_version}",
                       path=str(delta_dir), rule="delta-no-chain")


def find_chain(delta_dir: Path, from_version: str, to_version: str) -> list[Path]:
    """The delta files of the shortest chain (see ``find_chain_steps`` for the directions)."""
    return [s.path for s in find_chain_steps(delta_dir, from_version, to_version)]


def apply_chain(src_dir: Path, steps: list[ChainStep], out_dir: Path, *, link_unchanged: bool = True,
                progress: Progress | None = None) -> list[ApplySummary]:
    """Apply ``steps`` in order; intermediate versions live in a staging directory beside
    ``out_dir`` and are removed afterwards, also on failure."""
    if not steps:
        raise AirlockError("empty chain: source and target versions are the same", rule="delta-no-chain")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise AirlockError(f"{out_dir}: output directory already exists; refusing to overwrite",
                           path=str(out_dir), rule="delta-output-exists")
    results: list[ApplySummary] = []
    with staging_dir(out_dir, prefix=CHAIN_STAGING_PREFIX) as work:
        current = Path(src_dir)
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            dest = out_dir if last else work / f"step-{i}"
            results.append(apply_delta(current, step.path, dest, reverse=step.reverse,
                                       link_unchanged=link_unchanged, progress=progress))
            if i > 0:
                shutil.rmtree(current, ignore_errors=True)
            current = dest
    return results
