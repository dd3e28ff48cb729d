"""Same seed, same answers? Compare two checkouts' trained weights and query answers bitwise.

Trains a model on the bundled Papalexi screen (``--steps``, ``--seed``), then answers ``predict`` on
training labels, ``counterfactual`` (one knockout + entity silences) on ``--cells`` control cells and
``prioritize`` (goal ``down:`` the first entity; 100 default gene candidates, entities, pairs), and writes the weights' hash and every answer to ``--out`` (npz + JSON). With ``--against`` an earlier
file, it prints, per answer, the largest absolute difference and whether the two are bitwise equal,
and exits 1 when any differs. Run it once per checkout (``PYTHONPATH=/path/to/checkout``) to show a
refactor or speed change left training and answers as they were:

    PYTHONPATH=/tmp/old python benchmarks/compare_answers.py --out /tmp/old.npz
    python benchmarks/compare_answers.py --out /tmp/new.npz --against /tmp/old.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np


def answers(steps: int, seed: int, n_cells: int, n_silences: int) -> tuple[str, dict[str, np.ndarray], dict]:
    """Weights hash, answers and what was asked, of a model trained at ``seed``."""
    import bioworld as bw

    adata = bw.data.load_papalexi()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control",
                           config={"max_steps": steps, "seed": seed, "num_threads": 1})
        wm.train(progress=False)
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in wm.module.parameters())).hexdigest()
    labels = sorted(set(wm.train_labels))[:6]
    ctrl = np.flatnonzero(adata.obs["perturbation"].astype(str).to_numpy() == "control")[:n_cells]
    specs = [labels[0]] + [f"silence:{e}" for e in wm.entity_names[:n_silences]]
    cf = wm.counterfactual(adata[ctrl].copy(), specs)
    goal = f"down:{wm.entity_names[0]}"
    ranked = wm.prioritize(None, goal, max_genes=100, n_boot=50).table.sort_values("intervention")
    out = {"predict_X": np.asarray(wm.predict(labels).X), "counterfactual_X": np.asarray(cf.X),
           "counterfactual_delta": np.asarray(cf.layers["delta"]), "entity_shift": np.asarray(cf.obsm["bw_entity_shift"]),
           "prioritize_score": ranked["score"].to_numpy(np.float64),
           "prioritize_rank": ranked["rank"].to_numpy(np.int64)}
    return digest, out, {"predict": labels, "counterfactual": specs, "cells": len(ctrl), "prioritize": goal,
                         "candidates": ranked["intervention"].astype(str).tolist(), "steps": steps, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="npz file for this checkout's answers")
    p.add_argument("--against", type=Path, default=None, help="an earlier --out file to compare with")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--silences", type=int, default=8)
    a = p.parse_args(argv)
    digest, out, asked = answers(a.steps, a.seed, a.cells, a.silences)
    np.savez(a.out, **out)
    a.out.with_suffix(".json").write_text(json.dumps({"weights_sha256": digest, **asked}, indent=1) + "\n")
    print(f"weights sha256 {digest[:16]}; answers written to {a.out}")
    if a.against is None:
        return 0
    old = np.load(a.against)
    old_meta = json.loads(a.against.with_suffix(".json").read_text())
    same = old_meta["weights_sha256"] == digest
    print(f"weights: {'bitwise equal' if same else 'DIFFER'} ({old_meta['weights_sha256'][:16]} vs {digest[:16]})")
    for key in ("predict", "counterfactual", "candidates"):
        if old_meta.get(key) != asked[key]:
            print(f"{key}: the two runs asked different questions ({len(old_meta.get(key) or [])} vs {len(asked[key])} labels)")
            same = False
    for k, v in out.items():
        if k not in old.files or old[k].shape != v.shape:
            print(f"{k}: shape {old[k].shape if k in old.files else 'missing'} vs {v.shape}")
            same = False
            continue
        equal = bool(np.array_equal(old[k], v))
        same &= equal
        print(f"{k} {v.shape}: max |diff| {float(np.abs(old[k] - v).max()):.3g}, {'bitwise equal' if equal else 'DIFFER'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
