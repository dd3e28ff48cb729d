"""Same seed, same model, whatever the environment's thread settings (issue 17 item 5).

numpy's / scipy's BLAS read OMP_NUM_THREADS / OPENBLAS_NUM_THREADS when loaded; the gene features
(randomized SVD) and the samplers use them, so before pinning the same seed gave different weights
with OMP_NUM_THREADS=1 and unset. Now TrainConfig.num_threads sets every pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import hashlib, sys
sys.path.insert(0, {tests!r})
import numpy as np
import bioworld as bw
from _helpers import small_simulation, sim_entities
s = small_simulation()
wm = bw.WorldModel(s.adata.copy(), entities=sim_entities(s), replicate_key="replicate", nmf_programs=3,
                   config={{"max_steps": 8, "seed": 0, "warmup_steps": 2, "num_threads": 1,
                            "groups_per_batch": 4, "cells_per_group": 6, "self_pairs": 8}})
wm.train(progress=False)
h = hashlib.sha256(wm.gene_features.table.tobytes())
for k, v in sorted(wm.module.state_dict().items()):
    h.update(v.detach().numpy().tobytes())
print("HASH", h.hexdigest())
"""


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BIOWORLD_DEBUG")}
    env.update(env_extra, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(REPO / "tests"))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(line for line in proc.stdout.splitlines() if line.startswith("HASH"))


@pytest.mark.slow
def test_thread_environment_does_not_change_the_model():
    one = _run({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    many = _run({"OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"})
    unset = _run({})
    assert one == many == unset


def test_num_threads_pins_every_blas_and_openmp_pool(small_sim):
    from threadpoolctl import threadpool_info, threadpool_limits

    import bioworld as bw
    from _helpers import sim_entities

    with threadpool_limits(limits=3):  # as if the environment had asked for 3
        bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), nmf_programs=0,
                      config={"num_threads": 1})
        pools = {(p["internal_api"], p["filepath"]): p["num_threads"] for p in threadpool_info()}
        assert any(api == "openblas" for api, _ in pools), pools
        assert set(pools.values()) == {1}, pools
