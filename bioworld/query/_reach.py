"""A user's directed network as a size prior for experiment design (``bw.design(..., network=)``).

A lab often knows more about its system than any bundled resource: a curated pathway map, a signalling
diagram, the graph of a simulator. Given as directed edges (``source -> target``, genes and / or entity
names), it tells :func:`bioworld.query._design.expected_sizes` how far each perturbation can reach: a
component's *reach* is the number of network nodes reachable from its start nodes within :data:`HOPS`
edges, the start nodes included. A gene knockout (knockdown, activation) starts at the gene and at the
model's entities whose gene sets hold it, a silence at its entity, a compound at its known targets. A
component none of whose start nodes is in the network has no reach (``0``: no information, never a
silent small value); the design then keeps its plain prior.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bioworld.errors import BioworldError

#: Edges followed from a component's start nodes.
HOPS = 3
_SOURCE = ("source", "from", "regulator", "tf")
_TARGET = ("target", "to")


def read_network(network: Any) -> dict[str, frozenset[str]]:
    """``node -> its direct successors`` from a table with ``source`` / ``target`` columns (a DataFrame, or a
    CSV / TSV path; ``from`` / ``to`` also accepted), a mapping ``node -> successors`` or an iterable of
    ``(source, target)`` pairs. Self loops are dropped; an empty network or an empty name is refused."""
    if isinstance(network, (str, os.PathLike)):
        network = _read_table(Path(network))
    if hasattr(network, "columns"):  # a DataFrame
        cols = {str(c).strip().lower(): c for c in network.columns}
        src = next((cols[c] for c in _SOURCE if c in cols), None)
        dst = next((cols[c] for c in _TARGET if c in cols), None)
        if src is None or dst is None:
            raise BioworldError(f"network table has columns {list(network.columns)[:8]}; expected 'source' and "
                                "'target' (one directed edge per row). Fix: rename the two columns")
        missing = int(network[src].isna().sum() + network[dst].isna().sum())
        if missing:
            raise BioworldError(f"network table has {missing} missing source / target value(s); expected a gene or "
                                "entity name on both ends of every edge. Fix: drop or fill those rows")
        pairs = list(zip(network[src].astype(str), network[dst].astype(str)))
    elif isinstance(network, Mapping):
        pairs = [(str(a), str(b)) for a, bs in network.items() for b in bs]
    elif isinstance(network, Iterable):
        pairs = [_pair(e) for e in network]
    else:
        raise BioworldError(f"network is a {type(network).__name__}; expected a table with source / target "
                            "columns, a CSV / TSV path, a mapping node -> successors or (source, target) pairs")
    out: dict[str, set[str]] = {}
    for a, b in pairs:
        a, b = a.strip(), b.strip()
        if not a or not b:
            raise BioworldError(f"network edge ({a!r}, {b!r}) has an empty node name; expected gene or entity "
                                "names on both ends. Fix: drop or fill that row")
        if a != b:
            out.setdefault(a, set()).add(b)
    if not out:
        raise BioworldError("the network has no edge between two different nodes; expected directed edges "
                            "source -> target")
    return {a: frozenset(bs) for a, bs in out.items()}


def _pair(edge: Any) -> tuple[str, str]:
    if isinstance(edge, (str, bytes)) or not hasattr(edge, "__len__") or len(edge) != 2:
        raise BioworldError(f"network edge {edge!r}; expected a (source, target) pair")
    return str(edge[0]), str(edge[1])


def _read_table(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise BioworldError(f"network file {path} does not exist; expected a CSV / TSV with source and target "
                            "columns")
    with open(path, newline="") as fh:
        head = fh.readline()
    sep = "\t" if "\t" in head else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (ValueError, csv.Error, UnicodeDecodeError) as e:
        raise BioworldError(f"network file {path} could not be read as a table ({e}); expected a CSV / TSV with "
                            "source and target columns") from None


def network_nodes(network: Mapping[str, frozenset[str]]) -> set[str]:
    """Every node of ``network``: sources and targets."""
    return set(network).union(*network.values())


def reach(network: Mapping[str, frozenset[str]], start: Iterable[str], hops: int = HOPS,
          nodes: set[str] | None = None) -> int:
    """Nodes of ``network`` reachable from ``start`` within ``hops`` edges, ``start`` nodes included (0 when
    none of them is in the network). ``nodes``: :func:`network_nodes` when the caller has them (many calls)."""
    nodes = network_nodes(network) if nodes is None else nodes
    seen = {s for s in start if s in nodes}
    frontier = set(seen)
    for _ in range(hops):
        frontier = {b for a in frontier for b in network.get(a, ())} - seen
        if not frontier:
            break
        seen |= frontier
    return len(seen)


def component_reach(space: Any, components: Sequence[Any], network: Mapping[str, frozenset[str]], *,
                    hops: int = HOPS, compound_targets: Callable[[str], list[str]] | None = None) -> np.ndarray:
    """``[len(components)]`` reach of each action component (module docstring); ``compound_targets(name)``
    gives a compound's target genes (default: the bundled compound knowledge, the user's own table first)."""
    from bioworld.query._candidates import GENETIC

    if compound_targets is None:
        from bioworld.query._priority import _compound_targets

        def compound_targets(name: str) -> list[str]:
            return _compound_targets(name, space)

    holds: dict[str, list[str]] = {}
    for ent in getattr(space, "entities", None) or ():
        for g in getattr(ent, "genes", ()):
            holds.setdefault(str(g), []).append(str(ent.name))
    nodes = network_nodes(network)  # once, not once per component
    out = np.zeros(len(components))
    for i, p in enumerate(components):
        if p.kind in GENETIC:
            start = [p.target, *holds.get(p.target, [])]
        elif p.kind == "silence":
            start = [p.target]
        elif p.kind == "compound":
            start = [t for g in compound_targets(p.target) for t in (g, *holds.get(g, []))]
        else:
            start = []
        out[i] = reach(network, start, hops, nodes)
    return out
