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
