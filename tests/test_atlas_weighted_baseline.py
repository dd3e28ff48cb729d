"""benchmarks/run_atlas_weighted_baseline.py: context similarity and the (weighted) residual transfer."""

from __future__ import annotations

import numpy as np

from _helpers import benchmark_script


def _toy():
    """4 compounds x 3 contexts; contexts 0 and 1 respond alike (same deviations), context 2 the opposite."""
    rng = np.random.default_rng(0)
    dev = rng.normal(size=(4, 6))
    key = np.repeat(np.arange(4), 3)
    ctx = np.tile(np.arange(3), 4)
    R = np.stack([dev[k] * (1.0 if c < 2 else -1.0) for k, c in zip(key, ctx)])
    return R, key, ctx


def test_context_similarity_reads_alike_contexts():
    mod = benchmark_script("run_atlas_weighted_baseline")
    R, key, ctx = _toy()
    sim = mod.context_similarity(R, ctx, key, np.arange(len(key)), 3)
    np.testing.assert_allclose(sim[0, 1], 1.0)
    np.testing.assert_allclose(sim[0, 2], -1.0)
    np.testing.assert_allclose(np.diag(sim), 0.0)


def test_transfer_leaves_the_row_out_and_weights_alike_contexts():
    mod = benchmark_script("run_atlas_weighted_baseline")
    R, key, ctx = _toy()
    cm = np.arange(18, dtype=float).reshape(3, 6)  # context means
    rows = np.arange(len(key))
    sim = mod.context_similarity(R, ctx, key, rows, 3)
    test = np.array([0])  # compound 0 in context 0
    uniform = mod.transfer(R, cm, sim, ctx, key, rows, test, 0.0)
    np.testing.assert_allclose(uniform[0], cm[0] + (R[1] + R[2]) / 2)  # its rows in contexts 1 and 2, not itself
    sharp = mod.transfer(R, cm, sim, ctx, key, rows, test, 50.0)
    np.testing.assert_allclose(sharp[0], cm[0] + R[1], atol=1e-12)  # context 1 responds like context 0
    alone = mod.transfer(R, cm, sim, ctx, key, np.array([0]), test, 0.0)  # no other row of the compound
    np.testing.assert_allclose(alone[0], cm[0])
