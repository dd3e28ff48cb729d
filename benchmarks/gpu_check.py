"""One-run check that every bioworld path works on a device and agrees with the CPU.

    python benchmarks/gpu_check.py                     # --device auto: cuda when torch sees one, else cpu
    python benchmarks/gpu_check.py --device cuda:0 --steps 60 --out gpu_check.json
    python benchmarks/gpu_check.py --tiny              # seconds: what the test suite runs (CPU vs CPU)
    python benchmarks/gpu_check.py --model-config '{"slot_graph_k": 8}'   # also a model option

What it does, on one simulated screen (the package's own simulator, ground truth known):

1. *Training numerics*: the same freshly initialised module scores the same batch on the CPU and on
   the device (eval mode, no dropout): losses and gradients must agree within tolerance.
2. *Training*: ``WorldModel.train`` on the device (``device=...``) and on the CPU, same seed. Random
   draws on a GPU differ from the CPU's, so the two trajectories differ; the check asks that the
   module stays on the device after training, the final losses are close (relative ``--loss-rtol``)
   and both models' predicted effects agree (Pearson ``--agree-r``).
3. *Queries on the same weights*: the device-trained model answers ``predict``,
   ``counterfactual`` (a knockout, a combination and a ``silence:`` do-operation) and
   ``prioritize`` on the device, then again after ``wm.to('cpu')``; and after ``save`` / ``load``.
   Answers must agree within ``--atol`` / ``--rtol``.
4. *Atlas pretraining* (``--atlas-steps`` > 0): a few steps of ``pretrain_atlas`` (no knowledge) on
   the device and on the CPU from the same seed (no device random draws): predictions must agree.

Prints one table (check, value, tolerance, pass) and exits 1 when any check fails (2 on bad
arguments). ``--out FILE`` also writes the table as JSON. With ``--device cpu`` the "device" run
is a second CPU run: a self-consistency check that runs anywhere (the test suite runs ``--tiny``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Check:
    name: str
    value: float
    tol: float
    ok: bool
    note: str = ""

    def row(self) -> dict:
        return {"check": self.name, "value": self.value, "tol": self.tol, "pass": self.ok, "note": self.note}


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _close(name: str, a, b, atol: float, rtol: float, note: str = "") -> Check:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = _max_abs(a, b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    tol = atol + rtol * scale
    return Check(name, d, tol, bool(np.isfinite(d) and d <= tol), note)


def _pearson(a, b) -> float:
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _module_device(wm) -> str:
    return str(next(wm.module.parameters()).device)


def _simulation(tiny: bool, seed: int):
    import bioworld as bw
    from bioworld.entities import Entity, EntitySet

    if tiny:
        sim = bw.data.simulate(n_pathways=4, n_cells_per_condition=16, n_control_cells=96, doubles=2,
                               n_truth_draws=10, seed=seed)
    else:
        sim = bw.data.simulate(n_pathways=8, n_cells_per_condition=60, n_control_cells=600, doubles=6,
                               n_truth_draws=10, seed=seed)
    ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "simulator") for n, g in sim.gmt.items()])
    return sim, ents


def _world_model(sim, ents, device: str, steps: int, seed: int, model_config: dict):
    import bioworld as bw

    cfg = {"max_steps": steps, "seed": seed, "warmup_steps": max(1, steps // 5), "checkpoint_every": 0,
           "device": device}
    holdout = [lab for lab in sim.adata.obs["perturbation"].unique() if "+" in lab][:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(sim.adata.copy(), entities=ents, replicate_key="replicate", holdout=holdout,
                           nmf_programs=0, config=cfg, model_config=model_config or None)
    return wm, holdout


def _train(wm) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-fit warning of a short run is not what this checks
        wm.train(progress=False)
    return float(wm.train_result.history[-1]["loss"])


def check_numerics(wm, device: str, atol: float, rtol: float) -> list[Check]:
    """Same initial module, same batch: loss terms and gradients on the CPU vs the device."""
    import torch

    from bioworld.train.trainer import _to_batch, loss_weights

    from bioworld.train.setup import new_module

    module = new_module(wm._state)
    module.eval()  # no dropout: the two passes are the same function
    batch = _one_batch(wm)
    out = []
    for dev in ("cpu", device):  # with device 'cpu': a second, independent pass
        m = module.to(dev)
        m.zero_grad(set_to_none=True)
        lo = m.loss(_to_batch(batch, None, dev), loss_weights(wm.train_config))
        lo.total.backward()
        grads = torch.cat([p.grad.detach().flatten().cpu() for p in m.parameters() if p.grad is not None])
        out.append((float(lo.total.detach().cpu()), [float(v.cpu()) for v in lo.terms.values()], grads.numpy()))
    (l0, t0, g0), (l1, t1, g1) = out
    return [_close("init loss (same batch)", [l1], [l0], atol, rtol),
            _close("init loss terms", t1, t0, atol, rtol),
            _close("init gradients", g1, g0, atol, rtol, f"{g0.size:,} values")]


def _one_batch(wm) -> dict:
    """One training batch drawn as ``wm.train`` draws it (the same sampler, seeded)."""
    from bioworld.train.setup import make_sampler

    state, data = wm._state, wm._data
    labels = list(state.space.actions)
    table = state.space.encode([state.space.actions[lab] for lab in labels])
    row_of = {lab: i for i, lab in enumerate(labels)}
    action_row = np.array([row_of.get(lab, -1) for lab in data.labels])
    train_rows = [row_of[lab] for lab in state.train_labels if lab != state.control]
    sampler = make_sampler(state.train_config, data, table, action_row, train_rows, row_of[state.control],
                           n_entities=len(state.entity_names), n_genes=len(state.genes))
    return sampler.sample(np.random.default_rng(state.train_config.seed))


def _queries(wm, cells, labels: list[str], interventions: list[str], goal: str, n_boot: int) -> dict:
    pred = wm.predict(labels)
    cf = wm.counterfactual(cells, interventions)
    pr = wm.prioritize(cells, goal, n_boot=n_boot, max_genes=50, refine_top=8)
    t = pr.table.set_index("intervention")
    return {"predict": np.asarray(pred.layers["delta"]), "counterfactual": np.asarray(cf.X),
            "prioritize": t["score"].to_numpy(), "prioritize_names": list(t.index),
            "prioritize_top": str(pr.table["intervention"].iloc[0])}


def check_queries(wm, sim, holdout: list[str], device: str, atol: float, rtol: float, tiny: bool) -> list[Check]:
    adata = sim.adata
    labels_all = [lab for lab in adata.obs["perturbation"].astype(str).unique() if lab != "control"]
    singles = [lab for lab in labels_all if "+" not in lab]
    labels = singles[:3] + holdout
    ctrl = adata[adata.obs["perturbation"].astype(str) == "control"]
    cells = ctrl[: (24 if tiny else 200)].copy()
    pathway = next(iter(sim.gmt))
    interventions = [singles[0], labels_all[[("+" in x) for x in labels_all].index(True)] if any("+" in x for x in labels_all)
                     else singles[1], f"silence:{pathway}"]
    goal = f"down:{pathway}"
    n_boot = 20 if tiny else 100
    dev_ans = _queries(wm, cells, labels, interventions, goal, n_boot)
    on_dev = _module_device(wm)
    checks = [Check("module on the device after train/queries", 0.0, 0.0, on_dev.split(":")[0] == device.split(":")[0],
                    on_dev)]
    wm.to("cpu")
    cpu_ans = _queries(wm, cells, labels, interventions, goal, n_boot)
    checks += [_close(f"{k}: device vs cpu (same weights)", dev_ans[k], cpu_ans[k], atol, rtol)
               for k in ("predict", "counterfactual")]
    same_names = dev_ans["prioritize_names"] == cpu_ans["prioritize_names"]
    if same_names:
        checks.append(_close("prioritize scores: device vs cpu", dev_ans["prioritize"], cpu_ans["prioritize"], atol, rtol,
                             f"top {dev_ans['prioritize_top']}"))
    else:  # ranks may swap within tolerance: compare by name
        d = dict(zip(cpu_ans["prioritize_names"], cpu_ans["prioritize"]))
        common = [n for n in dev_ans["prioritize_names"] if n in d]
        a = [dev_ans["prioritize"][dev_ans["prioritize_names"].index(n)] for n in common]
        checks.append(_close("prioritize scores: device vs cpu (by name)", a, [d[n] for n in common], atol, rtol,
                             f"{len(common)} common of {len(d)}"))
    with tempfile.TemporaryDirectory(prefix="bioworld-gpu-check-") as tmp:
        import bioworld as bw

        wm.save(os.path.join(tmp, "m"))
        loaded = bw.WorldModel.load(os.path.join(tmp, "m")).to(device)
        re = loaded.predict(labels)
        checks.append(_close("predict after save/load on the device", np.asarray(re.layers["delta"]), cpu_ans["predict"],
                             atol, rtol, _module_device(loaded)))
    wm.to(device)
    return checks


def check_training(sim, ents, device: str, steps: int, seed: int, model_config: dict, loss_rtol: float,
                   agree_r: float, atol: float, rtol: float, tiny: bool) -> tuple[list[Check], dict]:
    timings = {}
    wm_cpu, holdout = _world_model(sim, ents, "cpu", steps, seed, model_config)
    checks = check_numerics(wm_cpu, device, atol, rtol)
    t = time.perf_counter()
    loss_cpu = _train(wm_cpu)
    timings["train_cpu_s"] = time.perf_counter() - t
    wm_dev, _ = _world_model(sim, ents, device, steps, seed, model_config)
    t = time.perf_counter()
    loss_dev = _train(wm_dev)
    timings["train_device_s"] = time.perf_counter() - t
    checks.append(Check("final training loss: device vs cpu (relative)", abs(loss_dev - loss_cpu) / max(abs(loss_cpu), 1e-9),
                        loss_rtol, abs(loss_dev - loss_cpu) <= loss_rtol * max(abs(loss_cpu), 1e-9),
                        f"{loss_dev:.4f} vs {loss_cpu:.4f}"))
    labels = [lab for lab in sim.adata.obs["perturbation"].astype(str).unique() if lab != "control"]
    r = _pearson(wm_dev.predict(labels).layers["delta"], wm_cpu.predict(labels).layers["delta"])
    checks.append(Check("predicted effects: device-trained vs cpu-trained (Pearson)", r, agree_r,
                        bool(np.isfinite(r) and r >= agree_r), f"{len(labels)} perturbations"))
    checks += check_queries(wm_dev, sim, holdout, device, atol, rtol, tiny)
    return checks, timings


def check_atlas(device: str, steps: int, atol: float, rtol: float) -> list[Check]:
    from bioworld.train.pretrain import PretrainConfig, pretrain_atlas

    out = []
    for dev in ("cpu", device):
        cfg = PretrainConfig(steps=steps, seed=0, use_knowledge=False, device=dev, batch_size=64, hidden=64, basis_dim=16)
        model = pretrain_atlas(config=cfg, progress=False)
        out.append((model.predict_rows(np.arange(32)), str(model.device), model.meta["final_loss"]))
    (p0, _, l0), (p1, d1, l1) = out
    return [Check("atlas model on the device", 0.0, 0.0, d1.split(":")[0] == device.split(":")[0], d1),
            _close(f"atlas pretraining ({steps} steps): final loss", [l1], [l0], atol, rtol),
            _close("atlas predictions: device vs cpu", p1, p0, atol, rtol)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: auto)")
    ap.add_argument("--steps", type=int, default=40, help="training steps of each world model (default 40)")
    ap.add_argument("--atlas-steps", type=int, default=5, help="atlas pretraining steps (0 = skip; default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a tiny screen and few steps (the test suite's run)")
    ap.add_argument("--model-config", default="{}", help="JSON of JEPAConfig overrides, e.g. '{\"slot_graph_k\": 8}'")
    ap.add_argument("--atol", type=float, default=2e-3, help="absolute tolerance on the same weights (default 2e-3)")
    ap.add_argument("--rtol", type=float, default=2e-3, help="relative tolerance (of the CPU value's max) (default 2e-3)")
    ap.add_argument("--loss-rtol", type=float, default=0.25, help="final loss, device- vs cpu-trained (default 0.25)")
    ap.add_argument("--agree-r", type=float, default=0.8, help="Pearson of the two models' effects (default 0.8)")
    ap.add_argument("--out", help="also write the table as JSON here")
    a = ap.parse_args(argv)
    import torch

    from bioworld.errors import BioworldError
    from bioworld.train.config import resolve_device

    try:
        device = resolve_device(a.device)
        model_config = json.loads(a.model_config)
        if not isinstance(model_config, dict):
            raise ValueError("not a JSON object")
    except BioworldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: --model-config {a.model_config!r} is not a JSON object ({e}); expected e.g. '{{\"slot_graph_k\": 8}}'",
              file=sys.stderr)
        return 2
    if a.steps < 1 or a.atlas_steps < 0:
        print(f"error: --steps {a.steps} / --atlas-steps {a.atlas_steps}; expected steps >= 1 and atlas steps >= 0",
              file=sys.stderr)
        return 2
    steps = min(a.steps, 6) if a.tiny else a.steps
    atlas_steps = min(a.atlas_steps, 2) if a.tiny else a.atlas_steps
    t0 = time.perf_counter()
    sim, ents = _simulation(a.tiny, a.seed)
    checks, timings = check_training(sim, ents, device, steps, a.seed, model_config, a.loss_rtol, a.agree_r,
                                     a.atol, a.rtol, a.tiny)
    if atlas_steps:
        checks += check_atlas(device, atlas_steps, a.atol, a.rtol)
    wall = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"bioworld GPU check: device {device} ({name}), torch {torch.__version__}, {steps} training steps, "
          f"model config {model_config or 'default'}, load {'%.2f %.2f %.2f' % os.getloadavg()}, {wall:.1f} s")
    print(f"training wall: cpu {timings['train_cpu_s']:.2f} s, device {timings['train_device_s']:.2f} s")
    w = max(len(c.name) for c in checks)
    print(f"{'check'.ljust(w)}  {'value':>10}  {'tolerance':>10}  result  note")
    for c in checks:
        print(f"{c.name.ljust(w)}  {c.value:>10.3g}  {c.tol:>10.3g}  {'pass' if c.ok else 'FAIL':6}  {c.note}")
    failed = [c.name for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if a.out:
        Path(a.out).write_text(json.dumps({"device": device, "device_name": name, "torch": torch.__version__,
                                           "steps": steps, "model_config": model_config, "wall_s": wall, **timings,
                                           "load": os.getloadavg(), "checks": [c.row() for c in checks]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
