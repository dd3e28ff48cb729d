"""Lab in the loop, retrospectively: does choosing experiments with ``bw.design`` beat random choice?

Per dataset and seed: start from a few measured perturbations (a seeded random set, the same for
every strategy), then each round every strategy adds a batch of perturbations chosen by
:func:`bioworld.query._design.select` (the selection ``bw.design`` runs), the predictor is refitted
on what is measured, and we track

* ``err_unmeasured``: mean over the not-yet-measured candidates of the MSE (over genes) between
  predicted and true effect (the issue's metric; its set shrinks and differs by strategy),
* ``err_all``: the same over every candidate (a fixed set; measured ones count with the model's
  fitted answer),
* ``hits``: share of the true top goal candidates measured so far,
* time per round (fit + selection) with the machine load beside it.

Datasets and predictors
-----------------------
``simulator``
    ``bw.data.simulate(seed=0, n_cells_per_condition=60, n_control_cells=300)``: 40 perturbations
    (24 driver knockouts, 8 doubles, 8 entity silences), exact truth (``truth_delta``). Predictor:
    the world model (JEPA) itself, ``--members`` seeds trained on the measured labels (the rest held
    out), ``--steps`` steps the first round and ``--warm-steps`` warm-started steps after (weights of
    the previous round's member copied where their shapes still match; the retrieval bank grows;
    ``--cold``: fresh members trained for ``--steps`` steps every round instead).
    Goal: ``down:`` the pathway with the most descendants; hits = the 5 candidates that lower it most
    (truth_entity_delta).
``papalexi``
    The bundled Papalexi screen (20 knockouts), subsampled to ``--cells`` cells per perturbation and
    5x as many controls for training; truth = observed mean effect on all cells (log1p CP10k). Same
    JEPA predictor, without the knowledge layer unless ``--knowledge`` (it roughly doubles the
    cost per round, and ``benchmarks/results/knowledge/KNOWLEDGE.md`` found no usable signal in it
    for this screen's unseen knockouts). Goal ``down:HALLMARK_INTERFERON_GAMMA_RESPONSE``; hits =
    the 5 knockouts whose observed change of the goal's genes is most negative.
``atlas``
    A new cell line: the atlas context ``--context`` (default HT-29, Tahoe-100M) with its compounds'
    signatures hidden; each compound is described by its mean signature in the other atlas contexts.
    Predictor: kernel ridge (linear kernel on those descriptions, plus the mean measured signature
    in the new line), an ensemble of ``--boot`` bootstrap refits over the measured compounds (closed
    form, so there is no warm start to speak of). Goal: the compounds with the strongest response
    in the new line (hits = top 10 by signature norm; discovery's goal score = predicted norm).

Strategies: random, knowledge (farthest-first over action features), information, discovery, mix, error
(see :mod:`bioworld.query._design`). Variants (not bw.design strategies): ``information+kprior``,
``information+sizes``, ``error (novelty=N transfer=T beta=B)`` (error with other settings, e.g.
``error (novelty=0)`` = expected error alone), ``error+network`` / ``error+network (shuffled)`` (the simulator:
error with its pathway DAG, or the DAG with permuted names, as ``bw.design(network=)``; ``error+network
(rewired=F)``: the DAG with a share F of its edges pointed at random other pathways, a map with errors), and the ceiling
``oracle (truth)``. Run:
``nice python benchmarks/run_design.py --only simulator --seeds 0,1,2`` (each dataset's rows are
merged into ``benchmarks/results/design/design.csv``; ``--report-only`` rewrites ``DESIGN.md`` and
``design.png`` from it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "design"
STRATEGIES = ("random", "knowledge", "information", "discovery", "mix", "error")
#: A variant tried on top (not a bw.design strategy): information with knowledge_prior=1 (errors shared by
#: candidates alike in action features, sized by their predicted effect).
KPRIOR = "information+kprior"
#: A variant tried on top: information whose gain prior is sized by measured look-alikes (transferred_sizes of the
#: observed single effects, by action-feature cosine) instead of by the predicted effect's size.
SIZES = "information+sizes"
VARIANTS = (KPRIOR, SIZES)
#: A variant tried on top: error with the task's network as a size prior (``bw.design(..., network=)``: the simulator's
#: pathway DAG as entity -> entity edges); ``error+network (shuffled)`` permutes the DAG's node names (ablation).
NETWORK = "error+network"
#: A ceiling, not a strategy: each round measures the unmeasured perturbations the current model gets most wrong
#: (it reads the truth). How far any acquisition could go with this predictor.
ORACLE = "oracle (truth)"
CSV = "design.csv"


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ------------------------------------------------------------------------------------ JEPA tasks
class JepaTask:
    """A screen, its candidates with true effects, and a world-model ensemble refitted per round."""

    def __init__(self, name, adata, truth, goal, true_goal, n_hits, *, entities, knowledge, start, batch, rounds,
                 members, steps, warm_steps, replicate_key):
        self.name, self.adata, self.truth, self.goal = name, adata, truth, goal
        self.labels = sorted(truth)
        self.true_goal = true_goal
        self.hits = set(sorted(self.labels, key=lambda lab: -true_goal[lab])[:n_hits])
        self.entities, self.knowledge = entities, knowledge
        self.start, self.batch, self.rounds = start, batch, rounds
        self.members, self.steps, self.warm_steps = members, steps, warm_steps
        self.replicate_key = replicate_key
        self.cfg = dict(groups_per_batch=6, cells_per_group=8, self_pairs=16, num_threads=1, checkpoint_every=0,
                        warmup_steps=20)
        self.predictor = "world model (JEPA)"
        self.cold = False  # True: every round trains fresh members for ``steps`` (no warm start; --cold)
        self.network = self.shuffled_network = None  # error+network variants (the simulator sets them)
        self.eval_cells = 0  # reference control cells the predictions average over (0 = all the model keeps)

    def fit(self, measured, prev, seed):
        import bioworld as bw

        hold = [lab for lab in self.labels if lab not in set(measured)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wm = bw.WorldModel(self.adata, entities=self.entities, holdout=hold, knowledge=self.knowledge,
                               nmf_programs=0, replicate_key=self.replicate_key, config=self.cfg)
            modules = []
            warm = prev is not None and not self.cold
            for k in range(self.members):
                with _warm_start(prev.modules[k].state_dict() if warm else None):
                    wm.train(progress=False, seed=1000 * seed + k, max_steps=self.warm_steps if warm else self.steps)
                modules.append(wm.module)
        return SimpleNamespace(wm=wm, modules=modules)

    def _member(self, pred, k):
        m = copy.copy(pred.wm)
        if hasattr(m, "_state"):  # the facade keeps its fields in a ModelState: give the copy its own
            m._state = copy.copy(pred.wm._state)
        m.module, m._engine = pred.modules[k], None
        if self.eval_cells:
            m.reference = pred.wm.reference[:self.eval_cells]
        return m

    def errors(self, pred):
        var = list(pred.wm.var_names)
        deltas = []
        for k in range(len(pred.modules)):
            p = self._member(pred, k).predict(self.labels)
            deltas.append(np.asarray(p.layers["delta"], np.float64))
        mean = np.mean(deltas, 0)
        assert var == list(self.var_names)
        return {lab: float(np.mean((mean[i] - self.truth[lab]) ** 2)) for i, lab in enumerate(self.labels)}

    def select(self, pred, measured, strategy, budget, seed):
        from bioworld.query._design import (NOVELTY, TRANSFER, action_features, anchored_on_measured, predicted_effects,
                                            select)

        cand = [lab for lab in self.labels if lab not in set(measured)]
        shim = SimpleNamespace(members=[self._member(pred, k) for k in range(len(pred.modules))])
        if strategy in ("random", "knowledge"):
            eff, goals = np.zeros((1, len(cand), 1)), None
        else:
            eff, goals, _ = predicted_effects(shim, cand, goal=self.goal, n_cells=64, seed=seed)
        feats = (action_features(pred.wm.space, cand) if strategy in ("knowledge", KPRIOR, SIZES) or _base(strategy) == "error"
                 else None)
        mfeat = action_features(pred.wm.space, list(measured)) if _base(strategy) in ("knowledge", "error") else None
        sel = select(eff, budget, _base(strategy), goal_scores=goals, features=feats, measured_features=mfeat, seed=seed,
                     knowledge_prior=1.0 if strategy == KPRIOR else 0.0,
                     sizes=self._sizes(pred, feats) if strategy == SIZES else self._expected(pred, cand, strategy, eff),
                     anchored=anchored_on_measured(pred.wm, cand) if strategy.startswith("error") else None,
                     transfer=_option(strategy, "transfer", TRANSFER), novelty=_option(strategy, "novelty", NOVELTY))
        return [cand[i] for i in sel.order]

    def _expected(self, pred, cand, strategy, eff):
        """error: the optimistic expected size of each candidate's true effect from the model's fit of the
        measured perturbations (what ``bw.design`` uses); None for the other strategies. ``error (beta=B)``:
        another optimism; ``error (floor=1)``: no smaller than the predicted size; ``error+network``: sized by
        reach in the task's network (``bw.design(network=)``), ``error+network (shuffled)``: in the network with
        its node names permuted (variants)."""
        if not strategy.startswith("error"):
            return None
        from bioworld.query._design import BETA, measured_fit_sizes

        beta = _option(strategy, "beta", BETA)
        shim = SimpleNamespace(members=[self._member(pred, k) for k in range(len(pred.modules))])
        network = None
        if strategy.startswith(NETWORK) and self.network is None:
            raise SystemExit(f"{strategy}: the task {self.name} has no network (the simulator and Papalexi have one)")
        if strategy.startswith(NETWORK):
            network = self.shuffled_network if "(shuffled" in strategy else self.network
            if _option(strategy, "rewired", 0.0) > 0:
                network = rewired(self.network, _option(strategy, "rewired", 0.0))
        sizes = measured_fit_sizes(shim, cand, n_cells=64, seed=0, beta=beta, network=network)
        if sizes is not None and _option(strategy, "floor", 0.0) > 0:
            sizes = np.maximum(sizes, np.sqrt((eff.mean(0) ** 2).mean(1)))
        return sizes

    def _sizes(self, pred, feats):
        """Expected effect size of each candidate from the observed single effects the model keeps (measured
        singles and silences), transferred by action-feature cosine."""
        from bioworld.query._design import action_features, transferred_sizes

        kept = list(pred.wm.single_effects.values())  # component -> (label, observed standardised mean effect)
        labs = [lab for lab, _ in kept]
        sz = [float(np.sqrt(np.mean(np.square(d)))) for _, d in kept]
        return transferred_sizes(feats, action_features(pred.wm.space, labs), sz)


def _option(strategy, name, default):
    """A variant's setting from its name, e.g. ``error (beta=0 transfer=1)`` -> beta 0.0; else ``default``."""
    for part in strategy.partition("(")[2].rstrip(")").split():
        key, _, val = part.strip().partition("=")
        if key == name:
            return float(val)
    return default


def _base(strategy):
    """The bw.design strategy a benchmark variant runs (``information+kprior`` -> information, ``error (beta=0)``
    and ``error+network (shuffled)`` -> error)."""
    return "information" if strategy in VARIANTS else strategy.split(" (")[0].split("+")[0]


@contextlib.contextmanager
def _warm_start(old_state):
    """Training inside starts from ``old_state`` where parameter shapes still match (the retrieval bank
    and the trained targets' own embeddings grow with the measured set and start fresh)."""
    if old_state is None:
        yield
        return
    import bioworld.train.setup as setup

    fresh = setup.new_module

    def warm(state):
        m = fresh(state)
        own = m.state_dict()
        own.update({n: v for n, v in old_state.items() if n in own and own[n].shape == v.shape})
        m.load_state_dict(own)
        return m

    setup.new_module = warm
    try:
        yield
    finally:
        setup.new_module = fresh


def simulator_task(args):
    import bioworld as bw
    from bioworld.entities import Entity, EntitySet

    sim = bw.data.simulate(seed=0, n_cells_per_condition=60, n_control_cells=300)
    a = sim.adata
    ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "simulator") for n, g in sim.gmt.items()])
    labels = sorted(set(a.obs["perturbation"].astype(str)) - {"control"})
    var = [str(v) for v in a.var_names]
    truth = {lab: sim.truth_delta.loc[lab, var].to_numpy(np.float64) for lab in labels}
    goal_p = max(sim.gmt, key=lambda p: (len(sim.descendants(p)), p))
    true_goal = {lab: -float(sim.truth_entity_delta.loc[lab, goal_p]) for lab in labels}
    t = JepaTask("simulator", a, truth, f"down:{goal_p}", true_goal, 5, entities=ents, knowledge=False,
                 start=4, batch=4, rounds=5, members=args.members, steps=args.steps, warm_steps=args.warm_steps,
                 replicate_key="replicate")
    t.var_names = var
    t.network, t.shuffled_network = simulator_networks(sim)
    return t


def simulator_networks(sim, seed=0):
    """The simulator's pathway DAG as ``(source, target)`` entity edges, and the same edges with the pathway names
    permuted among themselves (seeded; the ablation: same shape, wrong nodes)."""
    edges = [(p, c) for p in sim.pathways for c in sorted(sim.children(p))]
    names = list(sim.pathways)
    perm = dict(zip(names, np.random.default_rng(seed).permutation(names).tolist()))
    return edges, [(perm[a], perm[b]) for a, b in edges]


def rewired(edges, frac, seed=0):
    """``edges`` with a share ``frac`` of them (seeded) pointed at another node: the source kept, the target drawn
    among the network's other nodes (no self loop, no edge already there). A map with errors in it, as a lab's is."""
    nodes = sorted({a for a, _ in edges} | {b for _, b in edges})
    rng = np.random.default_rng(seed)
    out = list(edges)
    have = set(out)
    for i in sorted(rng.choice(len(out), size=int(round(frac * len(out))), replace=False).tolist()):
        a, b = out[i]
        options = [n for n in nodes if n != a and (a, n) not in have]
        if options:
            new = (a, options[int(rng.integers(len(options)))])
            have.discard((a, b))
            have.add(new)
            out[i] = new
    return out


def papalexi_task(args):
    import bioworld as bw
    from bioworld.data import mean_deltas, normalize, register

    full = bw.data.load_papalexi()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(full, perturbation_key="perturbation", control="control")
    X = normalize(full, reg)
    lab = full.obs["perturbation"].astype(str).to_numpy()
    obs, _ = mean_deltas(X, lab, "control")
    rng = np.random.default_rng(0)
    keep = []
    for name in sorted(set(lab)):
        idx = np.flatnonzero(lab == name)
        n = 5 * args.cells if name == "control" else args.cells
        keep.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    sub = full[np.sort(np.concatenate(keep))].copy()
    labels = sorted(obs)
    goal_e = "HALLMARK_INTERFERON_GAMMA_RESPONSE"
    from bioworld.entities import default_entities

    genes = [str(g) for g in full.var_names]
    ent = {e.name: set(e.genes) for e in default_entities()}[goal_e]
    cols = [i for i, g in enumerate(genes) if g in ent]
    true_goal = {k: -float(obs[k][cols].mean()) for k in labels}
    t = JepaTask("papalexi", sub, obs, f"down:{goal_e}", true_goal, 5, entities=None, knowledge=args.knowledge,
                 start=4, batch=2, rounds=5, members=args.members, steps=args.steps, warm_steps=args.warm_steps,
                 replicate_key=None)
    t.var_names = genes
    # cheaper steps and predictions: 299 genes x ~50 entity slots cost ~0.2 s/step at load 9 on 2 shared cores
    t.cfg.update(groups_per_batch=4, cells_per_group=6, self_pairs=8)
    t.eval_cells = 128
    t.predictor = "world model (JEPA; 4 groups x 6 cells + 8 self pairs per batch; effects averaged over 128 reference cells)"
    t.network, t.shuffled_network = regulation_networks()
    return t


def regulation_networks(seed=0):
    """The bundled regulation network (OmniPath signed directed + DoRothEA A-C; signs ignored) as ``(source,
    target)`` edges, and the same edges with the gene names permuted among its nodes (seeded; the ablation)."""
    from bioworld.knowledge.network import regulation_network

    genes, m = regulation_network()
    c = m.tocoo()
    edges = [(genes[i], genes[j]) for i, j in zip(c.row, c.col)]
    perm = dict(zip(genes, np.random.default_rng(seed).permutation(genes).tolist()))
    return edges, [(perm[a], perm[b]) for a, b in edges]


# ------------------------------------------------------------------------------------ atlas task
class AtlasTask:
    """A new atlas cell line: which compounds to profile first so the rest are predicted best."""

    def __init__(self, context, n_boot, ridge):
        from bioworld.knowledge import load_atlas

        atlas = load_atlas()
        obs = atlas.obs
        X = np.asarray(atlas.X, np.float64)
        is_cmp = obs["key"].astype(str).str.startswith("cmp:").to_numpy()
        ctx = obs["context"].astype(str).to_numpy()
        here = is_cmp & (ctx == context)
        if not here.any():
            raise SystemExit(f"atlas context {context!r} has no compound signatures")
        keys = obs["key"].astype(str).to_numpy()
        self.labels, truth, desc = [], {}, {}
        for i in np.flatnonzero(here):
            k = keys[i]
            other = np.flatnonzero((keys == k) & (ctx != context))
            if len(other) >= 2 and k not in truth:
                self.labels.append(k)
                truth[k] = X[i]
                desc[k] = X[other].mean(0)
        self.labels.sort()
        self.truth = truth
        self.Y = np.stack([truth[k] for k in self.labels])  # [C, G] signatures in the new line
        D = np.stack([desc[k] for k in self.labels])
        D = D - D.mean(0)
        self.D = D / np.linalg.norm(D, axis=1, keepdims=True).clip(1e-9)
        self.name, self.context, self.goal = "atlas", context, "strongest response"
        self.true_goal = {k: float(np.linalg.norm(truth[k])) for k in self.labels}
        self.hits = set(sorted(self.labels, key=lambda k: -self.true_goal[k])[:10])
        self.start, self.batch, self.rounds = 5, 5, 6
        self.n_boot, self.ridge = n_boot, ridge
        self.predictor = f"kernel ridge on other-context signatures ({n_boot} bootstrap refits)"

    def _ridge(self, idx):
        pos = {k: i for i, k in enumerate(self.labels)}
        m = np.array([pos[k] for k in idx])
        Ym = self.Y[m]
        mu = Ym.mean(0)
        K = self.D[m] @ self.D[m].T
        alpha = np.linalg.solve(K + self.ridge * np.eye(len(m)), Ym - mu)
        return mu + (self.D @ self.D[m].T) @ alpha  # [C, G]

    def fit(self, measured, prev, seed):
        rng = np.random.default_rng([seed, len(measured)])
        meas = list(measured)
        boots = [self._ridge([meas[i] for i in rng.integers(0, len(meas), len(meas))]) for _ in range(self.n_boot)]
        return SimpleNamespace(mean=self._ridge(meas), boots=np.stack(boots))

    def errors(self, pred):
        return {k: float(np.mean((pred.mean[i] - self.Y[i]) ** 2)) for i, k in enumerate(self.labels)}

    def select(self, pred, measured, strategy, budget, seed):
        from bioworld.query._design import select

        pos = {k: i for i, k in enumerate(self.labels)}
        cand = [k for k in self.labels if k not in set(measured)]
        ci = np.array([pos[k] for k in cand])
        eff = pred.boots[:, ci]
        goals = np.linalg.norm(eff, axis=2)  # predicted response strength per refit
        mi = np.array([pos[k] for k in measured])
        sizes = None
        if strategy == SIZES:
            from bioworld.query._design import transferred_sizes

            sizes = transferred_sizes(self.D[ci], self.D[mi], np.sqrt((self.Y[mi] ** 2).mean(1)))
        sel = select(eff, budget, "information" if strategy in VARIANTS else strategy, goal_scores=goals,
                     features=self.D[ci], measured_features=self.D[mi], seed=seed,
                     knowledge_prior=1.0 if strategy == KPRIOR else 0.0, sizes=sizes)
        return [cand[i] for i in sel.order]


# ------------------------------------------------------------------------------------ the loop
def run_task(task, seeds, strategies, progress=True):
    rows = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 7])
        start = [task.labels[i] for i in sorted(rng.choice(len(task.labels), task.start, replace=False))]
        t0 = time.perf_counter()
        first = task.fit(start, None, seed)
        fit0 = time.perf_counter() - t0
        err0 = task.errors(first)
        for strategy in strategies:
            measured, pred, errs, fit_s, sel_s = list(start), first, err0, fit0, 0.0
            for r in range(task.rounds + 1):
                un = [lab for lab in task.labels if lab not in set(measured)]
                rows.append({
                    "dataset": task.name, "seed": seed, "strategy": strategy, "round": r,
                    "n_measured": len(measured), "err_unmeasured": float(np.mean([errs[lab] for lab in un])) if un else np.nan,
                    "err_all": float(np.mean([errs[lab] for lab in task.labels])),
                    "hits": len(task.hits & set(measured)) / len(task.hits),
                    "fit_s": round(fit_s, 2), "select_s": round(sel_s, 3), "load1": load1(),
                    "chosen": ",".join(measured[len(start):]), "predictor": task.predictor,
                })
                if progress:
                    print(f"{task.name} seed {seed} {strategy:11s} round {r} n={len(measured):3d} "
                          f"err_un {rows[-1]['err_unmeasured']:.4f} err_all {rows[-1]['err_all']:.4f} "
                          f"hits {rows[-1]['hits']:.2f} fit {fit_s:.1f}s sel {sel_s:.2f}s load {rows[-1]['load1']}",
                          flush=True)
                if r == task.rounds or not un:
                    break
                t0 = time.perf_counter()
                if strategy == ORACLE:
                    chosen = sorted(un, key=lambda lab: (-errs[lab], lab))[:task.batch]
                else:
                    chosen = task.select(pred, measured, strategy, task.batch, seed * 100 + r)
                sel_s = time.perf_counter() - t0
                measured = measured + chosen
                t0 = time.perf_counter()
                pred = task.fit(measured, pred, seed)
                fit_s = time.perf_counter() - t0
                errs = task.errors(pred)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ report
def _auc(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    return float(np.trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 else float("nan")


def _needed(x, y, level):
    """Measurements at which the curve first reaches ``level`` (linear interpolation), or NaN."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    for i in range(len(y)):
        if y[i] <= level:
            if i == 0:
                return float(x[0])
            return float(x[i - 1] + (x[i] - x[i - 1]) * (y[i - 1] - level) / (y[i - 1] - y[i]))
    return float("nan")


def summarize(df):
    out = []
    for (ds, seed), g in df.groupby(["dataset", "seed"]):
        rnd = g[g.strategy == "random"].sort_values("round")
        auc_r = _auc(rnd.n_measured, rnd.err_unmeasured)
        auc_all_r = _auc(rnd.n_measured, rnd.err_all)
        final_r, n_final = float(rnd.err_unmeasured.iloc[-1]), float(rnd.n_measured.iloc[-1])
        final_all_r = float(rnd.err_all.iloc[-1])
        for s, h in g.groupby("strategy"):
            h = h.sort_values("round")
            auc = _auc(h.n_measured, h.err_unmeasured)
            auc_all = _auc(h.n_measured, h.err_all)
            out.append({"dataset": ds, "seed": seed, "strategy": s, "auc": auc, "auc_ratio": auc / auc_r,
                        "auc_all": auc_all, "auc_all_ratio": auc_all / auc_all_r,
                        "final_err": float(h.err_unmeasured.iloc[-1]),
                        "n_to_random_final": _needed(h.n_measured, h.err_unmeasured, final_r),
                        "share_to_random_final": _needed(h.n_measured, h.err_unmeasured, final_r) / n_final,
                        "share_to_random_final_all": _needed(h.n_measured, h.err_all, final_all_r) / n_final,
                        "hits_auc": _auc(h.n_measured, h.hits), "final_hits": float(h.hits.iloc[-1]),
                        "round_s": float((h.fit_s + h.select_s)[h["round"] > 0].mean()),
                        "select_s": float(h.select_s[h["round"] > 0].mean()),
                        "load1": float(h.load1.mean())})
    return pd.DataFrame(out)


def _order(names) -> list[str]:
    """bw.design's strategies first, then the variants tried (e.g. ``information+kprior``) by name."""
    names = set(names)
    return [s for s in STRATEGIES if s in names] + sorted(names - set(STRATEGIES))


def _ms(v, count=False):
    """mean ± sd over seeds; ``count``: also how many seeds have a value (n/a = never reached)."""
    v = np.asarray(v, float)
    n = len(v)
    v = v[np.isfinite(v)]
    tail = f" ({len(v)}/{n})" if count and len(v) < n else ""
    if not len(v):
        return "n/a" + (f" (0/{n})" if count else "")
    return (f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}") + tail


def plotted_sets(datasets) -> list[str]:
    """The blocks ``design.png`` draws: per family (the dataset name before `` (``: simulator, papalexi, atlas) its
    most recently written block (last in the CSV), so the figure keeps one column per family; every block's table
    is in DESIGN.md."""
    last: dict[str, str] = {}
    for ds in datasets:
        last[str(ds).split(" (")[0]] = ds  # (families in the order they first appear)
    return list(last.values())


def plot(df, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = plotted_sets(df.dataset)
    names = _order(df[df.dataset.isin(sets)].strategy)
    palette = plt.get_cmap("tab10")
    colour = {s: "k" if s == "random" else palette(i % 10) for i, s in enumerate(n for n in names if n != "random")}
    colour["random"] = "k"
    fig, axes = plt.subplots(3, len(sets), figsize=(5.2 * len(sets), 10.5), squeeze=False)
    labels = ("MSE per gene, mean over unmeasured", "MSE per gene, mean over all candidates", "share of true goal hits measured")
    for j, ds in enumerate(sets):
        d = df[df.dataset == ds]
        for s in _order(d.strategy):
            h = d[d.strategy == s]
            if h.empty:
                continue
            for i, col in enumerate(("err_unmeasured", "err_all", "hits")):
                m = h.groupby("round")[[col, "n_measured"]].agg(["mean", "std"])
                x = m[("n_measured", "mean")]
                axes[i, j].errorbar(x, m[(col, "mean")], yerr=m[(col, "std")].fillna(0), label=s, marker="o",
                                    ms=3, capsize=2, lw=2.5 if s == "random" else 1.5, color=colour[s])
        axes[0, j].set_title(ds.replace(" (", "\n("), fontsize=10)
        axes[2, j].set_xlabel("perturbations measured")
        axes[0, j].legend(fontsize=7)
        for i, lab in enumerate(labels):
            axes[i, j].set_ylabel(lab, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _verdict(ds: str, g: pd.DataFrame) -> str:
    """The issue's bar, read off the table: simulator = random's final error with <= 60% of its measurements (on the
    mean over the block's seeds, a seed that never reaches it failing the mean; and, stricter, on every seed); real
    data = a lower AUC than random (mean over seeds; how many seeds)."""
    rows = []
    for s, h in g[~g.strategy.isin(["random", ORACLE])].groupby("strategy"):
        share = h.share_to_random_final.to_numpy(float)
        rows.append((s, float(np.nanmean(h.auc_ratio)), int((h.auc_ratio < 1).sum()), len(h),
                     bool(np.all(np.isfinite(share)) and np.all(share <= 0.6)), share,
                     bool(np.all(np.isfinite(share)) and share.mean() <= 0.6)))
    if not rows:
        return f"Verdict ({ds}): no strategy besides random was run."
    best = min(rows, key=lambda r: r[1])
    text = (f"Verdict ({ds}): best AUC ratio {best[0]} {best[1]:.3f} (below random on {best[2]} of {best[3]} seeds). ")
    if ds.startswith("simulator"):
        mean_ok = [f"{r[0]} ({r[5].mean():.3f})" for r in rows if r[6]]
        ok = [r[0] for r in rows if r[4]]
        text += ("Random's final error with <= 60% of its measurements on the mean over these seeds: "
                 + (", ".join(mean_ok) if mean_ok else "no strategy (target not met)")
                 + "; on every seed: " + (", ".join(ok) if ok else "no strategy") + ".")
    else:
        text += "Beats random on the mean AUC: " + ("yes" if best[1] < 1 else "no (target not met)") + "."
    o = g[g.strategy == ORACLE]
    if len(o):  # the ceiling: reads the truth, so it is no strategy and is not in the verdict above
        text += (f" Ceiling ({ORACLE}, measures what the model gets most wrong): AUC ratio {_ms(o.auc_ratio)}, "
                 f"share to random final {_ms(o.share_to_random_final, True)}.")
    return text


def write_report(out: Path) -> Path:
    df = pd.read_csv(out / CSV)
    summ = summarize(df)
    summ.to_csv(out / "design_summary.csv", index=False)
    plot(df, out / "design.png")
    lines = ["# Lab in the loop: which experiments next (retrospective)", "",
             "Generated by `benchmarks/run_design.py` (see its docstring for datasets, predictors and metrics). "
             "Each round every strategy adds a batch chosen by `bioworld.query._design.select` (what `bw.design` "
             "runs), the predictor is refitted, and the error on every not-yet-measured perturbation is recorded. "
             "AUC = area under the error curve over the measurements made, divided by their range (lower is "
             "better); ratio = AUC / random's AUC on the same seed (< 1 beats random). "
             "`share to random final` = measurements the strategy needs to reach random's final error, as a "
             "share of random's final count (interpolated between rounds; mean over the seeds that reached it, "
             "(k/n) = how many did; n/a = none). `err_all` "
             "scores every candidate (a fixed set) instead of the unmeasured ones.", "",
             "![error vs round, the newest block of each family](design.png)", ""]
    for ds, g in summ.groupby("dataset", sort=False):
        d = df[df.dataset == ds]
        lines += [f"## {ds}", "",
                  f"Predictor: {d.predictor.iloc[0]}. Seeds: {', '.join(map(str, sorted(d.seed.unique())))}. "
                  f"Measured: {int(d.n_measured.min())} at the start, {int(d.n_measured.max())} after "
                  f"{int(d['round'].max())} rounds.", "",
                  "| strategy | AUC err unmeasured | ratio to random | share to random final | AUC err all "
                  "(ratio) | share to random final (err all) | hits AUC | final hits | s / round | load |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in _order(g.strategy):
            h = g[g.strategy == s]
            if h.empty:
                continue
            lines.append(f"| {s} | {_ms(h.auc)} | {_ms(h.auc_ratio)} | {_ms(h.share_to_random_final, True)} | "
                         f"{_ms(h.auc_all)} ({_ms(h.auc_all_ratio)}) | {_ms(h.share_to_random_final_all, True)} | "
                         f"{_ms(h.hits_auc)} | {_ms(h.final_hits)} | {h.round_s.mean():.1f} | {h.load1.mean():.1f} |")
        lines += ["", _verdict(ds, g), ""]
    lines += ["Machine: " + f"{os.cpu_count()} CPU cores shared with other jobs (load = 1-minute load average "
              "recorded each round).", ""]
    notes = out / "NOTES.md"  # how the rows were produced (hand-written: runs, code versions, variants)
    if notes.exists():
        lines += ["## How these rows were produced", "", notes.read_text().strip(), ""]
    (out / "DESIGN.md").write_text("\n".join(lines))
    return out / "DESIGN.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="simulator,papalexi,atlas")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--members", type=int, default=2, help="world-model seeds per round (JEPA tasks)")
    ap.add_argument("--steps", type=int, default=150, help="training steps of the first round")
    ap.add_argument("--warm-steps", type=int, default=75, help="warm-started steps of later rounds")
    ap.add_argument("--cold", action="store_true", help="JEPA tasks: every round trains fresh members for --steps "
                    "steps (what a user who retrains each round gets) instead of warm-starting for --warm-steps")
    ap.add_argument("--cells", type=int, default=60, help="Papalexi: training cells per perturbation (5x for control)")
    ap.add_argument("--knowledge", action="store_true", help="Papalexi: train with the knowledge layer (slower; "
                    "benchmarks/results/knowledge: no usable signal for this screen's unseen knockouts)")
    ap.add_argument("--context", default="HT-29", help="atlas: the new cell line")
    ap.add_argument("--boot", type=int, default=8, help="atlas: bootstrap refits")
    ap.add_argument("--ridge", type=float, default=1.0, help="atlas: kernel ridge penalty")
    ap.add_argument("--tag", default="", help="suffix of the dataset name in the CSV, e.g. a commit: rows of a rerun on "
                    "newer code (with their own random) kept apart from the earlier ones")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        strategies = [s for s in args.strategies.split(",") if s]
        for name in args.only.split(","):
            t0 = time.perf_counter()
            task = {"simulator": simulator_task, "papalexi": papalexi_task,
                    "atlas": lambda a: AtlasTask(a.context, a.boot, a.ridge)}[name](args)
            if args.tag:
                task.name = f"{name} ({args.tag})"
            if args.cold and isinstance(task, JepaTask):
                task.cold = True
                task.predictor += f"; retrained from scratch each round ({args.steps} steps)"
            df = run_task(task, seeds, strategies)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
            path = args.out / CSV
            if path.exists():
                old = pd.read_csv(path)
                old = old[~((old.dataset == task.name) & old.seed.isin(seeds) & old.strategy.isin(strategies))]
                df = pd.concat([old, df], ignore_index=True)
            df.to_csv(path, index=False)
    print(write_report(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
