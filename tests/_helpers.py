"""Small shared builders for tests (not fixtures, so modules can call them with their own sizes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark_script(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` loaded as a module (registered in ``sys.modules``, so its dataclasses work)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def sim_entities(result):
    """EntitySet from a SimulationResult's pathway GMT."""
    from bioworld.entities import Entity, EntitySet

    return EntitySet(
        [Entity(name, tuple(genes), tuple(1.0 for _ in genes), "simulator") for name, genes in result.gmt.items()]
    )


def small_simulation(seed: int = 0, **kw):
    from bioworld.data import simulate

    args = dict(n_pathways=5, n_cells_per_condition=30, n_control_cells=240, doubles=4,
                n_truth_draws=2000, seed=seed)
    args.update(kw)
    return simulate(**args)


def use_compound_table(monkeypatch, table: dict):
    """The bundled compound knowledge plus ``table`` (name -> targets) as what the query layer reads."""
    from bioworld.knowledge import CompoundKnowledge

    ck = CompoundKnowledge.bundled().with_targets(table)
    monkeypatch.setattr("bioworld.query._candidates._compound_knowledge", lambda: ck)
    return ck


def control_cells(sim, n: int):
    """The first ``n`` control cells of a simulated screen (a copy)."""
    import numpy as np

    a = sim.adata
    return a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:n]].copy()


def write_tiny_cli_screen(d, *, doubles: int):
    """A tiny simulated screen as raw files in ``d`` (train.h5ad, pathways.gmt, ...) and a fast ``config.json``,
    for training through the CLI in a few seconds."""
    import json

    from bioworld.data import simulate

    simulate(n_pathways=3, genes_per_pathway=6, n_drivers=2, n_other_genes=6, n_cells_per_condition=10,
             n_control_cells=60, doubles=doubles, n_truth_draws=100, seed=0).write(d)
    (d / "config.json").write_text(json.dumps({"groups_per_batch": 4, "cells_per_group": 6, "self_pairs": 8,
                                               "num_threads": 1}))
    return d
