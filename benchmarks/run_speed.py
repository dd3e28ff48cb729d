"""Speed and memory of bioworld: training, scaling with cells / entities, queries, baselines.

    python benchmarks/run_speed.py                       # everything (~7 min on 2 busy cores), writes benchmarks/results/speed/
    python benchmarks/run_speed.py --papalexi-steps 200  # 200 measured steps, default-length wall extrapolated
    python benchmarks/run_speed.py --only scaling        # one section (train | scaling | baselines)
    python benchmarks/run_speed.py --with-1m             # also the ~1M-cell simulated case (~4.6 GB RSS)
    python benchmarks/run_speed.py --only scaling --with-1m --merge   # redo one section, keep the others

Every case runs in its own subprocess, so ``ru_maxrss`` (peak resident memory) is that case's own
peak and one case's allocations do not inflate the next. Outputs: ``SPEED.md`` (tables + machine)
and ``speed.csv`` (one row per measured quantity).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "speed"
GOAL = "down:HALLMARK_INTERFERON_GAMMA_RESPONSE"


def _rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20  # Linux: KiB, macOS: bytes


def _load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def _machine() -> dict:
    import torch

    from bioworld.train import TrainConfig

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "train_threads": TrainConfig().resolved_threads(), "loadavg_start": _load()}


# ------------------------------------------------------------------------------------------- cases
def case_papalexi(steps: int, tmp: str) -> dict:
    """Default TrainConfig on Papalexi (``steps`` may be fewer than the default max_steps), then queries."""
    import numpy as np
    import torch

    import bioworld as bw
    from bioworld.train import TrainConfig

    default_steps = TrainConfig().max_steps
    t = time.perf_counter()
    adata = bw.data.load_papalexi()
    wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control")
    setup_s = time.perf_counter() - t
    load_train = _load()
    # with fewer steps than default the LR / EMA schedules are compressed; per-step cost is unchanged
    wm.train(progress=False, max_steps=steps)
    tr = wm.train_result
    per_step = tr.wall_s / steps
    res = {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "n_entities": len(wm.entity_names),
           "setup_s": setup_s, "steps": steps, "default_steps": default_steps, "train_wall_s": tr.wall_s,
           "per_step_s": per_step, "cells_per_s": tr.cells_per_s,
           "extrapolated_default_wall_s": per_step * default_steps,
           "batch_cells": TrainConfig().groups_per_batch * TrainConfig().cells_per_group + TrainConfig().self_pairs,
           "rss_after_train_mb": _rss_mb(), "load_train": load_train, "threads": torch.get_num_threads()}
    model_dir = os.path.join(tmp, "papalexi_model")
    wm.save(model_dir)

    # ---- queries
    load_q = _load()
    ctrl = adata[adata.obs["perturbation"].astype(str) == "control"]
    rng = np.random.default_rng(0)
    wm.predict(["STAT1"])  # warm-up (caches)
    lat = []
    for _ in range(20):
        t = time.perf_counter()
        wm.predict(["STAT1"])
        lat.append(time.perf_counter() - t)
    res["predict_latency_median_s"] = float(np.median(lat))
    res["predict_latency_p90_s"] = float(np.quantile(lat, 0.9))
    res["predict_reference_cells"] = int(len(wm.reference))

    cells = ctrl[np.sort(rng.choice(ctrl.n_obs, 1000, replace=False))].copy()
    ivs = ["STAT1", "IFNGR1", "JAK2", "IRF1", "IFNGR1+STAT1", "silence:HALLMARK_INTERFERON_GAMMA_RESPONSE",
           "silence:HALLMARK_TNFA_SIGNALING_VIA_NFKB", "kd:STAT1:0.5"]
    wm.counterfactual(cells[:50].copy(), ivs[:2])  # warm-up
    t = time.perf_counter()
    cf = wm.counterfactual(cells, ivs)
    cf_s = time.perf_counter() - t
    res.update(cf_cells=cells.n_obs, cf_interventions=len(ivs), cf_wall_s=cf_s,
               cf_cell_interventions_per_s=cells.n_obs * len(ivs) / cf_s, cf_rows=cf.n_obs)

    t = time.perf_counter()
    pr = wm.prioritize(cells, GOAL)
    res.update(plan_wall_s=time.perf_counter() - t, plan_candidates=int(pr.provenance["n_candidates"]),
               plan_cells=int(pr.provenance["n_cells_used"]), plan_screen_cells=int(pr.provenance["n_screen_cells"]),
               plan_refined=int(pr.provenance.get("n_refined", 0)), plan_top=str(pr.table["intervention"].iloc[0]))
    res["load_query"] = load_q
    res["rss_end_mb"] = _rss_mb()
    return res


def case_baselines(tmp: str) -> dict:
    """MeanOfTrain and LinearEmbedding fit+predict on Papalexi deltas (what benchmark.py does per fold)."""
    import numpy as np

    import bioworld as bw
    from bioworld.data import normalize, register
    from bioworld.eval.baselines import FitContext, LinearEmbedding, MeanOfTrain
    from bioworld.eval.benchmark import _knowledge_embedding, _train_expression, mean_deltas

    adata = bw.data.load_papalexi()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(adata, perturbation_key="perturbation", control="control")
    t = time.perf_counter()
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    deltas, _ = mean_deltas(X, labels, "control")
    prep_s = time.perf_counter() - t
    test = ["STAT1"]
    train = {k: v for k, v in deltas.items() if k not in test}
    t = time.perf_counter()
    emb = _knowledge_embedding()
    emb_s = time.perf_counter() - t
    ctx = FitContext(control="control", target_embedding=emb,
                     expression=_train_expression(X, labels, [lab for lab in set(labels) if lab not in test], 0))
    res = {"load_baselines": _load(), "prep_deltas_s": prep_s, "knowledge_embedding_s": emb_s}
    for b in (MeanOfTrain, LinearEmbedding):
        reps = []
        for _ in range(5):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b().fit(train, ctx).predict(test)
            reps.append(time.perf_counter() - t)
        res[f"{b.__name__}_fit_predict_s"] = float(np.median(reps))
    res["rss_end_mb"] = _rss_mb()
    return res


def case_sim(n_pathways: int, cells_per_condition: int, n_control: int, steps: int, n_entities: int = 0,
             n_other_genes: int = 20, model_config: dict | None = None) -> dict:
    """Training steps/s and peak RSS on a simulated screen of a given size.

    ``n_entities`` > 0 replaces the simulator's pathways by that many entity slots: the true
    pathways plus random 12-gene sets drawn from the panel (seeded), so the entity count varies on a
    fixed data set (fixed cells, genes and conditions).
    """
    import numpy as np
    import torch

    import bioworld as bw
    from bioworld.entities import Entity, EntitySet

    t = time.perf_counter()
    sim = bw.data.simulate(n_pathways=n_pathways, doubles=8, n_other_genes=n_other_genes,
                           n_cells_per_condition=cells_per_condition, n_control_cells=n_control,
                           n_truth_draws=200, seed=0)
    sim_s = time.perf_counter() - t
    adata = sim.adata
    gmt = dict(sim.gmt)
    if n_entities:
        rng = np.random.default_rng(0)
        genes = [str(g) for g in adata.var_names]
        gmt = dict(list(gmt.items())[:n_entities])
        while len(gmt) < n_entities:
            gmt[f"RANDOM_{len(gmt)}"] = [genes[i] for i in rng.choice(len(genes), 12, replace=False)]
    ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "simulator") for n, g in gmt.items()])
    rss_data = _rss_mb()
    t = time.perf_counter()
    wm = bw.WorldModel(adata, entities=ents, replicate_key="replicate", nmf_programs=0, model_config=model_config,
                       config={"max_steps": steps, "warmup_steps": min(100, steps // 2), "checkpoint_every": 0})
    setup_s = time.perf_counter() - t
    load = _load()
    t = time.perf_counter()
    wm.train(progress=False)
    train_call_s = time.perf_counter() - t  # fit + the training-fit check (predictions of the training perturbations)
    tr = wm.train_result
    return {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "n_entities": len(wm.entity_names),
            "local_attention": bool(wm.model_config.sparse_slots), "slot_block": wm.model_config.slot_block,
            "per_step_s": tr.wall_s / steps, "train_call_s": train_call_s, "load_end": _load(),
            "n_conditions": int(adata.obs["perturbation"].nunique()), "simulate_s": sim_s, "setup_s": setup_s,
            "steps": steps, "train_wall_s": tr.wall_s, "steps_per_s": steps / tr.wall_s,
            "cells_per_s": tr.cells_per_s, "rss_after_data_mb": rss_data, "peak_rss_mb": _rss_mb(),
            "load": load, "threads": torch.get_num_threads()}


def _slot_world_model(n_entities: int, model_config: dict):
    """The 116-gene, 9,800-cell simulation with ``n_entities`` slots (true pathways + random 12-gene sets)."""
    import numpy as np

    import bioworld as bw
    from bioworld.entities import Entity, EntitySet

    k, cpc, nc = SIM_CELLS["10k"]
    sim = bw.data.simulate(n_pathways=k, doubles=8, n_other_genes=20, n_cells_per_condition=cpc, n_control_cells=nc,
                           n_truth_draws=200, seed=0)
    rng = np.random.default_rng(0)
    genes = [str(g) for g in sim.adata.var_names]
    gmt = dict(list(sim.gmt.items())[:n_entities])
    while len(gmt) < n_entities:
        gmt[f"RANDOM_{len(gmt)}"] = [genes[i] for i in rng.choice(len(genes), 12, replace=False)]
    ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "simulator") for n, g in gmt.items()])
    return bw.WorldModel(sim.adata, entities=ents, replicate_key="replicate", nmf_programs=0, model_config=model_config,
                         config={"max_steps": 10, "checkpoint_every": 0, "num_threads": 1})


def case_slot_steps(rounds: int) -> dict:
    """Per-step training time of the SLOT_CASES models, interleaved step by step (same load for each ratio).

    Each model takes one optimiser step (loss, backward, AdamW, EMA) on its own seeded batches, in turn,
    ``rounds`` times after one warm-up step; the median per model is reported.
    """
    import numpy as np
    import torch

    from bioworld.train._threads import pin_threads
    from bioworld.train.trainer import _to_batch, loss_weights

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import _one_batch

    pin_threads(1)
    models, setup = {}, {}
    for name, n_ent, mc in SLOT_CASES:
        t = time.perf_counter()
        wm = _slot_world_model(n_ent, mc)
        setup[name] = time.perf_counter() - t
        from bioworld.train.setup import new_module

        m = new_module(wm._state)
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        models[name] = (m, opt, _to_batch(_one_batch(wm)), loss_weights(wm.train_config), wm.model_config.sparse_slots)
    times: dict[str, list[float]] = {name: [] for name in models}
    load = _load()
    for r in range(rounds + 1):
        for name, (m, opt, batch, w, _) in models.items():
            t = time.perf_counter()
            out = m.loss(batch, w)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()
            m.ema_update(0.99)
            if r:  # round 0 = warm-up
                times[name].append(time.perf_counter() - t)
    base = float(np.median(times[SLOT_CASES[0][0]]))
    res = {"rounds": rounds, "load": load, "load_end": _load(), "peak_rss_mb": _rss_mb()}
    for name, (_, _, batch, _, local) in models.items():
        med = float(np.median(times[name]))
        res.update({f"{name}_s_per_step": med, f"{name}_x_base": med / base, f"{name}_local": bool(local),
                    f"{name}_setup_s": setup[name], f"{name}_batch": int(batch.x_src.shape[0])})
    return res


def case_backed_write(n_chunks: int, cells_per_condition: int, n_control: int, path: str) -> dict:
    """Write a simulated screen of ``n_chunks`` independent cell batches to an on-disk h5ad, chunk by chunk."""
    import bioworld as bw

    def chunks():
        for i in range(n_chunks):
            sim = bw.data.simulate(n_pathways=8, doubles=8, n_cells_per_condition=cells_per_condition,
                                   n_control_cells=n_control, n_truth_draws=1, seed=0, cells_seed=i)
            a = sim.adata
            a.obs_names = [f"b{i}_{c}" for c in a.obs_names]
            a.obsm.clear()
            yield a

    t = time.perf_counter()
    bw.data.write_h5ad_chunks(path, chunks())
    return {"write_s": time.perf_counter() - t, "file_mb": os.path.getsize(path) / 2**20, "peak_rss_mb": _rss_mb()}


def case_backed_train(path: str, epochs: int) -> dict:
    """Train out of core from the backed file for ``epochs`` passes of the block buffer over every cell."""
    import torch

    import bioworld as bw
    from bioworld.entities import Entity, EntitySet
    from bioworld.train import TrainConfig

    rss0 = _rss_mb()
    adata = bw.data.open_backed(path)
    gmt: dict[str, list[str]] = {}
    for g, pw in zip(adata.var_names, adata.var["pathway"]):
        if pw:
            gmt.setdefault(str(pw), []).append(str(g))
    ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "simulator") for n, g in gmt.items()])
    c = TrainConfig()
    n_blocks = -(-adata.n_obs // c.block_size)
    steps = epochs * (-(-n_blocks // c.buffer_blocks)) * c.buffer_refresh
    t = time.perf_counter()
    wm = bw.WorldModel(adata, entities=ents, replicate_key="replicate", nmf_programs=0,
                       config={"max_steps": steps, "checkpoint_every": 0})
    setup_s = time.perf_counter() - t
    rss_setup = _rss_mb()
    load = _load()
    wm.train(progress=False)
    tr = wm.train_result
    return {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "n_entities": len(wm.entity_names),
            "steps": steps, "epochs": epochs, "block_size": c.block_size, "buffer_blocks": c.buffer_blocks,
            "buffer_refresh": c.buffer_refresh, "resident_controls": c.resident_controls,
            "setup_s": setup_s, "train_wall_s": tr.wall_s, "epoch_s": tr.wall_s / epochs,
            "steps_per_s": steps / tr.wall_s, "rows_read": wm._X.rows_read, "rss_start_mb": rss0,
            "rss_after_setup_mb": rss_setup, "peak_rss_mb": _rss_mb(), "load": load,
            "threads": torch.get_num_threads()}


def _ddp_model(steps: int):
    import bioworld as bw

    adata = bw.data.load_papalexi()
    return bw.WorldModel(adata, perturbation_key="perturbation", control="control", replicate_key="bio_rep",
                         config={"max_steps": steps, "num_threads": 1, "checkpoint_every": 0})


def _ddp_rank(rank: int, world: int, steps: int) -> dict:
    wm = _ddp_model(steps)
    wm.train(progress=False)
    return {"train_wall_s": wm.train_result.wall_s, "peak_rss_mb": _rss_mb()}


def case_ddp(steps: int) -> dict:
    """Papalexi, default config, ``steps`` steps: 1 process vs 2 gloo processes (1 torch thread each).

    Both runs train on the same global batch per step (the 2-process run splits it by perturbation
    group); the 2-process parameters follow the 1-process ones (tests/test_distributed.py).
    """
    from bioworld.train.distributed import train_distributed

    load = _load()
    wm = _ddp_model(steps)
    wm.train(progress=False)
    one = wm.train_result.wall_s
    ranks = train_distributed(2, _ddp_rank, steps, backend="gloo", threads=1)
    two = max(r["train_wall_s"] for r in ranks)
    return {"steps": steps, "wall_1proc_s": one, "wall_2proc_s": two, "speedup": one / two,
            "peak_rss_1proc_mb": _rss_mb(), "peak_rss_per_rank_mb": max(r["peak_rss_mb"] for r in ranks),
            "load": load, "load_end": _load()}


# ------------------------------------------------------------------------------------------ driver
def _run_case(name: str, args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--case", name, *args]
    t = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name} {' '.join(args)} (load {_load()})", flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1] if (p.stderr or p.stdout) else f"rc={p.returncode}"}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["case_wall_s"] = time.perf_counter() - t
    res["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    print("   ", json.dumps(res), flush=True)
    return res


SIM_CELLS = {  # label -> (n_pathways, cells_per_condition, n_control); 8 pathways = 41 conditions
    "10k": (8, 200, 1800),
    "100k": (8, 2300, 5700),
    "1M": (8, 23000, 57000),
}
SIM_ENTITIES = (20, 50, 200)
SLOT_CASES = [  # (case, entity slots, model_config): ~100 vs ~1,000 slots on the same 116-gene, ~10k-cell screen
    ("slots_108_default", 108, {}),
    ("slots_1008_default", 1008, {}),
    ("slots_1008_dense", 1008, {"slot_block": 0}),
]  # entity slots on the fixed 10k-cell simulation with 500 extra genes (596 genes)


def _fmt(v, nd=2):
    if isinstance(v, float):
        return f"{v:,.{nd}f}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _load1(uptime: str) -> str:
    """The 1-minute load average of an ``uptime`` line."""
    return uptime.split("load average:")[-1].split(",")[0].strip() if "load average:" in uptime else "?"


def _query_speed_section() -> list[str]:
    """Section (h): the per-cell counterfactual throughput files of ``benchmarks/run_query_speed.py``
    (``query_speed*.json``) as one table, then the hand-written analysis ``query_speed_notes.md``."""
    files = sorted(OUT.glob("query_speed*.json"))
    if not files:
        return []
    L = ["## (h) Per-cell counterfactual throughput (`benchmarks/run_query_speed.py`)", "",
         "`WorldModel.counterfactual` on bundled Papalexi control cells (43 slots, 299 genes, a 20-step model): cells x "
         "interventions (half gene knockouts, half untrained entity silences, i.e. do-operations) per second of wall "
         "time and per CPU-second of the process (all its threads). Each row is one repeat; the load is the 1-minute "
         "load average before the repeat (2 cores shared with other jobs).", "",
         "| file | code | cells x interventions | torch threads | load | wall s | per s (wall) | per CPU-s |",
         "|---|---|---|---|---|---|---|---|"]
    for f in files:
        d = json.loads(f.read_text())
        for r in d["runs"]:
            cpu = f"{r['cell_interventions_per_cpu_s']:,.0f}" if "cell_interventions_per_cpu_s" in r else "not recorded"
            L.append(f"| `{f.name}` | {d.get('code', '')} | {d['n_cells']} x {d['n_interventions']} | "
                     f"{r.get('query_threads', d['torch_threads'])} | "
                     f"{_load1(r['uptime_before'])} | {r['wall_s']:.2f} | {r['cell_interventions_per_s']:,.0f} | {cpu} |")
    notes = OUT / "query_speed_notes.md"
    L += [""] + ([notes.read_text().strip(), ""] if notes.exists() else [])
    return L


def write_query_section() -> None:
    """Rewrite only section (h) of an existing SPEED.md (inserted before "Not measured" when absent)."""
    path = OUT / "SPEED.md"
    text = path.read_text()
    section = "\n".join(_query_speed_section())
    head = "## (h) "
    if head in text:
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "\n")
    else:
        anchor = text.find("## Not measured")
        text = text[:anchor] + section + "\n" + text[anchor:] if anchor >= 0 else text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)


def write_report(machine: dict, results: dict, notes: list[str]) -> None:
    import csv

    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, res in results.items():
        for k, v in res.items():
            rows.append({"case": case, "metric": k, "value": v})
    with open(OUT / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "metric", "value"])
        w.writeheader()
        w.writerows(rows)
    L = ["# bioworld speed and memory", "",
         f"Generated by `python benchmarks/run_speed.py` on {time.strftime('%Y-%m-%d %H:%M')}. Raw numbers: `speed.csv`.",
         "", "## Machine", ""]
    L += [f"- {k}: {v}" for k, v in machine.items()]
    L += ["", "When each case was measured (runs with `--merge` keep earlier cases): " + "; ".join(
        f"{k} {v.get('measured_at', 'an earlier run')}" for k, v in results.items()) + "."]
    L += ["", "The machine was shared with other jobs while this ran (load averages are recorded per case: "
          "1/5/15-minute). Wall times are therefore upper bounds for an idle machine of this size.", ""]
    p = results.get("papalexi", {})
    if p and "error" not in p:
        label = "measured" if p["steps"] == p["default_steps"] else \
            f"EXTRAPOLATED from {p['steps']} measured steps x {p['default_steps']} default steps"
        L += ["## (a) Training on Papalexi, default TrainConfig", "",
              f"{p['n_cells']:,} cells x {p['n_genes']} genes, {p['n_entities']} entity slots, "
              f"batch {p['batch_cells']} transitions/step, {p['threads']} torch thread(s); load during training {p['load_train']}.", "",
              "| quantity | value |", "|---|---|",
              f"| setup (register, normalise, entities, NMF, featurizers) | {_fmt(p['setup_s'])} s |",
              f"| steps measured | {p['steps']} (default max_steps = {p['default_steps']}) |",
              f"| training wall for the measured steps | {_fmt(p['train_wall_s'])} s |",
              f"| per step | {_fmt(p['per_step_s'] * 1000, 1)} ms |",
              f"| training throughput | {_fmt(p['cells_per_s'], 0)} cells/s (transition pairs incl. self pairs) |",
              f"| default max_steps wall ({label}) | {_fmt(p['extrapolated_default_wall_s'])} s |",
              f"| peak RSS after training (ru_maxrss) | {_fmt(p['rss_after_train_mb'], 0)} MB |", ""]
        L += ["## (c) Queries (model from (a))", "", f"Load during queries: {p['load_query']}.", "",
              "| query | value |", "|---|---|",
              f"| `wm.predict(['STAT1'])` latency (median / p90 of 20, over {p['predict_reference_cells']} reference cells) "
              f"| {_fmt(p['predict_latency_median_s'] * 1000, 1)} / {_fmt(p['predict_latency_p90_s'] * 1000, 1)} ms |",
              f"| `wm.counterfactual` {p['cf_cells']} cells x {p['cf_interventions']} interventions | {_fmt(p['cf_wall_s'])} s "
              f"= {_fmt(p['cf_cell_interventions_per_s'], 0)} cell-interventions/s |",
              f"| `wm.prioritize({p['plan_cells']} control cells, '{GOAL}')`: {p['plan_candidates']} candidates "
              f"(all entity + gene singles, entity pairs, top gene pairs; screened on {p['plan_screen_cells']} latent "
              f"prototype cells; {p.get('plan_refined', '?')} rows, the best and their singles, re-scored exactly on all cells) "
              f"| {_fmt(p['plan_wall_s'])} s (top: {p['plan_top']}) |",
              f"| peak RSS at the end of the case | {_fmt(p['rss_end_mb'], 0)} MB |", ""]
    b = results.get("baselines", {})
    if b and "error" not in b:
        L += ["## (d) Baselines on the same machine (Papalexi, fit on all perturbation deltas but STAT1, predict STAT1)", "",
              f"Load: {b['load_baselines']}. Shared preparation (normalise + per-perturbation mean deltas): "
              f"{_fmt(b['prep_deltas_s'])} s; LinearEmbedding's knowledge embedding (built once, cached by the "
              f"benchmark): {_fmt(b['knowledge_embedding_s'])} s.", "",
              "| method | fit+predict | world-model training / this |", "|---|---|---|"]
        wm_train = p.get("extrapolated_default_wall_s") if p and "error" not in p else None
        for name in ("MeanOfTrain", "LinearEmbedding"):
            v = b[f"{name}_fit_predict_s"]
            ratio = f"{wm_train / v:,.0f}x" if wm_train else "n/a"
            L.append(f"| {name} | {_fmt(v * 1000, 2)} ms | {ratio} |")
        if wm_train:
            L.append(f"| WorldModel (default steps{', extrapolated' if p['steps'] != p['default_steps'] else ''}) "
                     f"| {_fmt(wm_train)} s | 1x |")
        L.append("")
    order = [f"sim_cells_{k}" for k in SIM_CELLS] + [f"sim_entities_{e}" for e in SIM_ENTITIES]
    sims = {k: results[k] for k in order if k in results}
    if sims:
        L += ["## (b) Scaling on simulated screens (fixed number of steps)", "",
              "`sim_cells_*`: the default 8-pathway simulation (116 genes, 8 entity slots) at growing cell "
              "counts. `sim_entities_*`: one ~10k-cell simulation with 500 extra genes (596 genes), entity slots = "
              "the 8 true pathways plus random 12-gene sets. Per-step cost is set by the batch (groups x cells per group + self pairs), genes and entity "
              "slots, not by the number of cells; cells cost memory (on this in-memory path the whole normalised "
              "matrix is held in RAM as float32, plus the AnnData counts; see (e) for out-of-core training) and "
              "setup time.", "",
              "| case | cells | genes | entities | steps | steps/s | cells/s | setup s | simulate s | RSS after data MB | peak RSS MB | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, r in sims.items():
            if "error" in r:
                L.append(f"| {k} | skipped / failed: {r['error']} |||||||||||")
                continue
            L.append(f"| {k} | {r['n_cells']:,} | {r['n_genes']} | {r['n_entities']} | {r['steps']} | "
                     f"{_fmt(r['steps_per_s'])} | {_fmt(r['cells_per_s'], 0)} | {_fmt(r['setup_s'])} | "
                     f"{_fmt(r['simulate_s'])} | {_fmt(r['rss_after_data_mb'], 0)} | {_fmt(r['peak_rss_mb'], 0)} | {r['load']} |")
        L.append("")
    backed = {k: v for k, v in results.items() if k.startswith("backed_")}
    if backed:
        L += ["## (e) Out-of-core training from a backed (on-disk) h5ad", "",
              "The simulated screen (same world as (b), 116 genes, 8 entity slots) is written to disk chunk by chunk "
              "(`bw.data.write_h5ad_chunks`, independent cell batches via `simulate(cells_seed=i)`), then opened "
              "with `bw.data.open_backed` and trained with the default TrainConfig for whole epochs of the block "
              "buffer (every block of cells read exactly once per epoch; `BlockBufferSampler`). Writing and "
              "training run in separate processes, so the training process's peak RSS is its own.", "",
              "| case | cells | file MB | write s | steps (epochs) | buffer | setup s | train s | s/epoch | steps/s | "
              "RSS after setup MB | peak RSS MB | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, r in backed.items():
            if "error" in r:
                L.append(f"| {k} | failed: {r['error']} ||||||||||||")
                continue
            L.append(f"| {k} | {r['n_cells']:,} | {_fmt(r['write_file_mb'], 0)} | {_fmt(r['write_write_s'])} | "
                     f"{r['steps']} ({r['epochs']}) | {r['buffer_blocks']} x {r['block_size']} cells, refresh "
                     f"{r['buffer_refresh']}, {r['resident_controls']:,} resident controls | {_fmt(r['setup_s'])} | "
                     f"{_fmt(r['train_wall_s'])} | {_fmt(r['epoch_s'])} | {_fmt(r['steps_per_s'])} | "
                     f"{_fmt(r['rss_after_setup_mb'], 0)} | {_fmt(r['peak_rss_mb'], 0)} | {r['load']} |")
        L.append("")
    st = results.get("slot_steps", {})
    if st:
        L += ["## (g) Entity slots: ~100 vs ~1,000 slots, local vs dense attention", "",
              "One simulated screen (8 pathways, 116 genes, 9,800 cells); slots = the 8 true pathways plus random "
              "12-gene sets (what GO / Reactome-scale gene sets give). `default` = the default model config: dense "
              "attention up to `dense_max_slots` = 128 slots, local attention above (`slot_block` = 16: slots in a "
              "gene-overlap order, each attends to its own and the two adjacent blocks of 16 plus one pooled key); "
              "`dense` = `slot_block=0`.", "",
              "Per-step time, interleaved (`--only slot_steps`): the three models take one training step each in "
              "turn (loss, backward, AdamW, EMA on the same seeded batch), so every ratio shares the machine's load; "
              "median of the rounds after a warm-up step.", ""]
        if "error" in st:
            L.append(f"failed: {st['error']}")
        else:
            L += [f"Rounds: {st['rounds']}; load start / end: {st['load']} / {st['load_end']}.", "",
                  "| model | slots | attention | batch | s/step | x the 108-slot step | setup s (WorldModel) |",
                  "|---|---|---|---|---|---|---|"]
            for name, n_ent, _ in SLOT_CASES:
                if f"{name}_s_per_step" in st:
                    L.append(f"| {name} | {n_ent} | {'local' if st[f'{name}_local'] in (True, 'True') else 'dense'} | {st[f'{name}_batch']} | "
                             f"{_fmt(st[f'{name}_s_per_step'])} | {st[f'{name}_x_base']:.1f}x | {_fmt(st[f'{name}_setup_s'])} |")
        L.append("")
    acc_path = OUT / "slot_attention.csv"
    if acc_path.exists():
        import pandas as pd

        acc = pd.read_csv(acc_path)
        metrics = [m for m in ("pearson_all", "pearson_top50", "pearson_desc", "leak_ratio", "pearson_top20", "mse_top20",
                               "direction_top20", "discrimination", "centred_pearson") if m in acc.columns]
        L += ["Accuracy with local attention forced on the benchmarks' own slot sets (`benchmarks/run_slot_attention.py`, "
              "raw rows in `slot_attention.csv`): by default these models (8 and 43 slots) attend densely, so their "
              "default figures are unchanged; here `dense_max_slots=0` and a block small enough that each slot sees only "
              "part of the others (simulator `slot_block=2`: 6 of 8 slots + the pooled key; Papalexi `slot_block=8`: 24 of "
              "43) against dense attention on the same seeds. Simulator: held-out `silence:` of every pathway "
              "(variant `none`, `run_simulator_causal`), 300 steps, seeds 0-2 (mean ± sd over 3 seeds x 8 silences). "
              "Papalexi: leave-targets-out, 2 folds, seed 0, 150 steps (mean ± sd over the 20 held-out targets; a quick "
              "setting, not the benchmark's 5-fold default). Loads: " + "; ".join(
                  f"{d} {a}: {ld}" for (d, a), ld in acc.groupby(["dataset", "attention"])["load"].first().items())
              + ".", "",
              "| dataset | method | attention | " + " | ".join(metrics) + " | n |",
              "|---|---|---|" + "---|" * len(metrics) + "---|"]
        g = acc.groupby(["dataset", "method", "attention"])
        for idx, grp in g:
            cells = [("—" if grp[m].isna().all() else f"{grp[m].mean():.3f} ± {grp[m].std():.3f}") for m in metrics]
            L.append(f"| {' | '.join(idx)} | " + " | ".join(cells) + f" | {len(grp)} |")
        L.append("")
    slots = {name: results[name] for name, _, _ in SLOT_CASES if name in results}
    if slots:
        L += ["End to end (`--only slots`, one subprocess per case, run one after the other): `WorldModel.train` for "
              "a few steps; per step = training wall / steps (first step included); `train()` adds the training-fit "
              "check (predictions of the training perturbations over 512 reference cells). Not interleaved: the loads "
              "differ (last column; the 1,008-slot case shared the machine with a 2-process test of mine). The "
              "training-fit check, i.e. the query engine, is the cost that grows fastest here: 62 s -> 977 s and peak RSS "
              "2.0 -> 9.4 GB for 9.3x the slots, because the engine runs 2,048 rows (cells x candidates) per pass "
              "whatever the slot count (`query.engine.ROWS_PER_PASS`).", "",
              "| case | slots | attention | steps | s/step | x the 108-slot step | setup s | train() s | peak RSS MB | load start / end |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        base = slots.get("slots_108_default", {}).get("per_step_s")
        for k, r in slots.items():
            if "error" in r:
                L.append(f"| {k} | failed: {r['error']} |||||||||")
                continue
            ratio = f"{r['per_step_s'] / base:.1f}x" if base else "n/a"
            L.append(f"| {k} | {r['n_entities']} | {'local' if r['local_attention'] in (True, 'True') else 'dense'} | {r['steps']} | "
                     f"{_fmt(r['per_step_s'])} | {ratio} | {_fmt(r['setup_s'])} | {_fmt(r['train_call_s'])} | "
                     f"{_fmt(r['peak_rss_mb'], 0)} | {r['load']} / {r.get('load_end', '?')} |")
        L.append("")
    d = results.get("ddp_papalexi", {})
    if d:
        L += ["## (f) Data-parallel training: 1 vs 2 processes (gloo, CPU)", "",
              "Papalexi, default TrainConfig, the same number of steps; each process uses 1 torch thread and the 2-process "
              "run splits every global batch by perturbation group (`bioworld.train.distributed.train_distributed`; "
              "gradients averaged by `DistributedDataParallel` in 25 MB buckets during the backward pass). "
              "On this shared 2-core machine the 2 processes compete with the other jobs for the same 2 cores, so the "
              "speed-up is a lower bound of what 2 free cores (or 2 nodes) give.", ""]
        if "error" in d:
            L.append(f"failed: {d['error']}")
        else:
            L += ["| steps | 1 process s | 2 processes s | speed-up | peak RSS 1 proc MB | peak RSS per rank MB | load start / end |",
                  "|---|---|---|---|---|---|---|",
                  f"| {d['steps']} | {_fmt(d['wall_1proc_s'])} | {_fmt(d['wall_2proc_s'])} | {_fmt(d['speedup'])}x | "
                  f"{_fmt(d['peak_rss_1proc_mb'], 0)} | {_fmt(d['peak_rss_per_rank_mb'], 0)} | {d['load']} / {d['load_end']} |"]
        L.append("")
    L += _query_speed_section()
    L += ["## Not measured / limits", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(L)
    (OUT / "SPEED.md").write_text(text)
    print(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--papalexi-steps", type=int, default=None,
                    help="training steps measured on Papalexi (default: TrainConfig's max_steps, 800; fewer steps "
                         "are reported as an extrapolation)")
    ap.add_argument("--sim-steps", type=int, default=40)
    ap.add_argument("--only", choices=["train", "scaling", "baselines", "backed", "ddp", "slots", "slot_steps", "none"], default=None)
    ap.add_argument("--slot-rounds", type=int, default=3, help="interleaved steps per model (--only slot_steps)")
    ap.add_argument("--slot-steps", type=int, default=8, help="steps per case of the slot-count comparison (--only slots)")
    ap.add_argument("--ddp-steps", type=int, default=200, help="steps of the 1- vs 2-process comparison (--only ddp)")
    ap.add_argument("--backed-cells", choices=sorted(SIM_CELLS), default="1M",
                    help="size of the on-disk (backed) screen for the out-of-core case (--only backed)")
    ap.add_argument("--backed-epochs", type=int, default=1, help="block-buffer passes over the on-disk screen")
    ap.add_argument("--with-1m", action="store_true", help="also the ~1M-cell simulation (needs ~10+ GB RAM)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    ap.add_argument("--report-only", action="store_true", help="rewrite SPEED.md from speed.csv (no case is run)")
    ap.add_argument("--query-section", action="store_true",
                    help="rewrite only section (h) of SPEED.md from query_speed*.json (benchmarks/run_query_speed.py)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the cases of an earlier speed.csv that this run does not measure again")
    a, rest = ap.parse_known_args()
    if a.case:  # worker mode: print one JSON line
        warnings.simplefilter("ignore")
        with tempfile.TemporaryDirectory() as tmp:
            if a.case == "papalexi":
                res = case_papalexi(int(rest[0]), tmp)
            elif a.case == "baselines":
                res = case_baselines(tmp)
            elif a.case == "sim":
                res = case_sim(*(int(x) for x in rest[:6]), *(json.loads(x) for x in rest[6:]))
            elif a.case == "slot_steps":
                res = case_slot_steps(int(rest[0]))
            elif a.case == "ddp":
                res = case_ddp(int(rest[0]))
            elif a.case == "backed_write":
                res = case_backed_write(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
            elif a.case == "backed_train":
                res = case_backed_train(rest[0], int(rest[1]))
            else:
                raise SystemExit(f"unknown case {a.case}")
        print(json.dumps(res))
        return 0

    machine = _machine()
    results: dict[str, dict] = {}
    if a.query_section:
        write_query_section()
        return 0
    if a.report_only:
        a.only, a.merge = "none", True
    notes = [
        "Out-of-core training (backed / on-disk h5ad) is NOT implemented: `TransitionSampler` indexes an "
        "in-memory float32 matrix of all cells, and `WorldModel` normalises the whole AnnData in memory. "
        "Memory therefore grows linearly with cells (see the scaling table); nothing here was measured out of core.",
        "No GPU was used (this machine has none): `TrainConfig.device='cuda'` places training on a GPU and the model "
        "stays there for queries, but that path has not been run here; `python benchmarks/gpu_check.py --device cuda` "
        "is the one-run check (training, predict, counterfactual, prioritize, save/load, atlas pretraining vs the CPU).",
        "Multi-process data-parallel training (gloo) is in `bioworld.train.distributed`; its speed-up was not "
        "benchmarked in this run (`--only ddp`).",
    ]
    if a.only in (None, "train"):
        from bioworld.train import TrainConfig

        steps = a.papalexi_steps or TrainConfig().max_steps
        results["papalexi"] = _run_case("papalexi", [str(steps)], a.timeout)
    if a.only in (None, "baselines"):
        results["baselines"] = _run_case("baselines", [], a.timeout)
    if a.only in (None, "scaling"):
        sizes = ["10k", "100k"] + (["1M"] if a.with_1m else [])
        for lab in sizes:
            k, cpc, nc = SIM_CELLS[lab]
            results[f"sim_cells_{lab}"] = _run_case("sim", [str(k), str(cpc), str(nc), str(a.sim_steps)], a.timeout)
        if not a.with_1m:
            notes.append("The ~1M-cell simulation was skipped (not requested with --with-1m): at ~1M cells x ~116 "
                         "genes the counts + normalised copies + AnnData need several GB and the simulator/normaliser "
                         "take minutes on this shared 2-core machine; extrapolate memory linearly from 10k -> 100k.")
        k, cpc, nc = SIM_CELLS["10k"]
        for e in SIM_ENTITIES:
            results[f"sim_entities_{e}"] = _run_case("sim", [str(k), str(cpc), str(nc), str(a.sim_steps), str(e), "500"],
                                                     a.timeout)
    if a.only in (None, "slots", "slot_steps"):
        results["slot_steps"] = _run_case("slot_steps", [str(a.slot_rounds)], a.timeout)
    if a.only in (None, "slots"):
        k, cpc, nc = SIM_CELLS["10k"]
        for name, n_ent, mc in SLOT_CASES:  # back to back, so that their ratios share the machine's load
            results[name] = _run_case("sim", [str(k), str(cpc), str(nc), str(a.slot_steps), str(n_ent), "20",
                                              json.dumps(mc)], a.timeout)
    if a.only in (None, "ddp"):
        results["ddp_papalexi"] = _run_case("ddp", [str(a.ddp_steps)], a.timeout)
        notes = [n for n in notes if "speed-up was not benchmarked" not in n]
    if a.only in (None, "backed"):
        k, cpc, nc = SIM_CELLS[a.backed_cells]
        n_chunks = 10 if a.backed_cells == "1M" else 1
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "screen.h5ad")
            w = _run_case("backed_write", [str(n_chunks), str(cpc // n_chunks), str(nc // n_chunks), path],
                          a.timeout)
            res = _run_case("backed_train", [path, str(a.backed_epochs)], a.timeout) if "error" not in w else w
            res.update({f"write_{k2}": v for k2, v in w.items() if k2 != "error"})
            results[f"backed_{a.backed_cells}"] = res
        notes = [n for n in notes if not n.startswith("Out-of-core training (backed")]
    if a.merge and (OUT / "speed.csv").exists():
        import csv

        old: dict[str, dict] = {}
        with open(OUT / "speed.csv") as f:
            for row in csv.DictReader(f):
                v = row["value"]
                try:
                    v = json.loads(v)
                except (json.JSONDecodeError, TypeError):
                    pass
                old.setdefault(row["case"], {})[row["metric"]] = v
        results = {**{k: v for k, v in old.items() if k not in results}, **results}
        if "ddp_papalexi" in results and "error" not in results["ddp_papalexi"]:
            notes = [n for n in notes if "speed-up was not benchmarked" not in n]
        if any(k.startswith("backed_") and "error" not in v for k, v in results.items()):
            notes = [n for n in notes if not n.startswith("Out-of-core training (backed")]
        if "sim_cells_1M" in results and "error" not in results["sim_cells_1M"]:
            notes = [n for n in notes if "1M-cell simulation was skipped" not in n]
    if "slots_1008_default" in results and "slots_1008_dense" not in results:
        notes.append("The end-to-end dense 1,008-slot case (`--only slots`) is not in this file: it was stopped, because "
                     "its training-fit check (predictions over 512 reference cells with dense attention) would have run for "
                     "more than the case timeout at this load; its per-step time is in the interleaved table of (g).")
    machine["loadavg_end"] = _load()
    write_report(machine, results, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
