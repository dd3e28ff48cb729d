"""Shared fixtures: the bundled datasets are read once per session and handed out as copies."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _papalexi_session():
    from bioworld.data import load_papalexi

    return load_papalexi()


@pytest.fixture(scope="session")
def _l1000_session():
    from bioworld.data import load_l1000

    return load_l1000()


@pytest.fixture
def papalexi(_papalexi_session):
    """Papalexi 2021 THP-1 KO screen (16,527 cells x 299 genes, raw counts); a fresh copy per test."""
    return _papalexi_session.copy()


@pytest.fixture
def l1000(_l1000_session):
    """L1000 A375 dose-response (341 wells x 978 genes, log2); a fresh copy per test."""
    return _l1000_session.copy()


@pytest.fixture(scope="session")
def small_sim():
    """A small simulated screen with ground truth (5 pathways), shared read-only."""
    from _helpers import small_simulation

    return small_simulation()


@pytest.fixture(scope="session")
def tiny_trained(small_sim):
    """A world model trained briefly once per session on the small simulation (read-only use)."""
    import bioworld as bw
    from _helpers import sim_entities

    holdout = [lab for lab in small_sim.adata.obs["perturbation"].unique() if "+" in lab][:1]
    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                       holdout=holdout, nmf_programs=0, config={"max_steps": 40, "seed": 0, "warmup_steps": 5})
    wm.train(progress=False)
    return wm


@pytest.fixture()
def knowledge(request, monkeypatch):
    """The bundled compound knowledge plus the test module's ``TABLE`` (name -> targets), read by the query layer."""
    from _helpers import use_compound_table

    return use_compound_table(monkeypatch, request.module.TABLE)


@pytest.fixture(scope="session")
def cells(small_sim):
    """The first 12 control cells of the small simulation (read-only use)."""
    from _helpers import control_cells

    return control_cells(small_sim, 12)
