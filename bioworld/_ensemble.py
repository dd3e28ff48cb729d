"""``bw.Ensemble``: several world models trained with different seeds, with calibrated intervals.

A single world model gives one answer. An ensemble gives the spread between seeds (model variance)
and, once :meth:`Ensemble.calibrate` has measured how far held-out predictions fall from what was
observed, prediction intervals for the effect of perturbations the models never saw
(:mod:`bioworld.query._uncertainty`). ``benchmarks/run_uncertainty.py`` reports their coverage.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from bioworld._world_model import WorldModel
from bioworld.errors import BioworldError, CheckpointError
from bioworld.query._uncertainty import Calibration, _check_level, normal_quantile

ENSEMBLE_META = "ensemble.json"
ENSEMBLE_FORMAT = "bioworld-ensemble"
ENSEMBLE_VERSION = 1


def _with_seed(config: Any, seed: int) -> dict[str, Any]:
    from bioworld.train import TrainConfig

    if config is None:
        d: dict[str, Any] = {}
    elif isinstance(config, TrainConfig):
        d = config.to_dict()
    elif isinstance(config, dict):
        d = dict(config)
    else:
        raise BioworldError(f"config is a {type(config).__name__}; expected a dict of TrainConfig fields or a TrainConfig")
    d["seed"] = int(seed)
    return d


def _check_training_data(adata: Any, ref: Any) -> None:
    """``calibrate``'s data: an AnnData on the members' genes, in their order (their training file)."""
    if not hasattr(adata, "var_names") or not hasattr(adata, "obs"):
        raise BioworldError(f"adata is a {type(adata).__name__}; expected the AnnData the members were trained on. "
                            "Fix: read it first: bw.data.read_h5ad(path)")
    names = [str(v) for v in adata.var_names]
    if names != list(ref.var_names):
        same_set = sorted(names) == sorted(ref.var_names)
        raise BioworldError(
            f"adata has {len(names)} genes" + (" in another order" if same_set else f" (e.g. {names[:3]})")
            + f"; expected the ensemble's {len(ref.var_names)} training genes in their order (e.g. "
            f"{list(ref.var_names)[:3]}): calibration retrains on the members' data. Fix: pass the data the members "
            "were trained on" + (": adata[:, ens.members[0].var_names]" if same_set or set(ref.var_names) <= set(names)
                                 else ""))


class Ensemble:
    """World models that differ only in their seed, queried together.

    Parameters
    ----------
    members
        At least two trained :class:`~bioworld.WorldModel` s on the same gene panel, entity set,
        control and training labels (e.g. from :meth:`train`).
    calibration
        A :class:`bioworld.query._uncertainty.Calibration` (from :meth:`calibrate` or a saved ensemble).
    """

    def __init__(self, members: Sequence[WorldModel], calibration: Calibration | None = None) -> None:
        members = list(members)
        if len(members) < 2:
            raise BioworldError(f"an ensemble needs at least 2 members, got {len(members)}; train more seeds (Ensemble.train(n_members=3))")
        ref = members[0]
        for i, m in enumerate(members):
            if not isinstance(m, WorldModel) or m.module is None:
                raise BioworldError(f"member {i} is not a trained WorldModel; train it (or load it) first")
            for what, a, b in (("var_names", m.var_names, ref.var_names), ("entities", m.entity_set.hash(), ref.entity_set.hash()),
                               ("control", m.control, ref.control), ("training labels", sorted(m.train_labels), sorted(ref.train_labels))):
                if a != b:
                    raise BioworldError(f"member {i} differs from member 0 in its {what}; expected models of the same data, "
                                        "entities and split that differ only in their seed")
        if calibration is not None and len(calibration.gene_scale) != len(ref.var_names):
            raise BioworldError(f"calibration covers {len(calibration.gene_scale)} genes but the models {len(ref.var_names)}; recalibrate")
        self.members = members
        self.calibration = calibration

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, adata: ad.AnnData, *, n_members: int = 3, seeds: Sequence[int] | None = None,
              progress: bool = True, **world_model_kwargs: Any) -> "Ensemble":
        """Train ``n_members`` world models on ``adata`` with seeds ``seeds`` (default 0..n-1).

        ``world_model_kwargs`` go to :class:`~bioworld.WorldModel` (``config`` gets each seed). Every
        member gets the first member's entity slots (its data-driven NMF programs included).
        """
        if seeds is not None and (isinstance(seeds, str) or not hasattr(seeds, "__iter__") or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise BioworldError(f"seeds={seeds!r}; expected a list of whole numbers >= 0, one per member, e.g. [0, 1, 2] "
                                "(a string was read digit by digit, 0.5 truncated). Fix: pass such a list, or n_members=")
        seeds = list(range(int(n_members))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise BioworldError(f"seeds={seeds}; expected at least 2 distinct seeds. Fix: e.g. seeds=[0, 1, 2] or "
                                "n_members=3")
        config = world_model_kwargs.pop("config", None)
        members: list[WorldModel] = []
        for s in seeds:
            kwargs = dict(world_model_kwargs)
            if members:  # the same slots for every member (data-driven NMF programs depend on the seed)
                kwargs.update(entities=members[0].entity_set, nmf_programs=0)
            wm = WorldModel(adata, config=_with_seed(config, s), **kwargs)
            members.append(wm.train(progress=progress))
        return cls(members)

    def calibrate(self, adata: ad.AnnData, *, n_folds: int = 4, levels: Sequence[float] = (0.8, 0.9, 0.95),
                  split_seed: int = 0, members_per_fold: int = 1, progress: bool = True,
                  **world_model_kwargs: Any) -> Calibration:
        """Measure held-out error on the training perturbations and fit the interval widths.

        Leave-targets-out over the members' training labels (``n_folds`` folds, shuffled with
        ``split_seed``): for each fold, ``members_per_fold`` models (the members' config, seeds of
        members 0..k-1) are trained without that fold's targets and predict them; the residuals
        (observed minus predicted delta) give :class:`~bioworld.query._uncertainty.Calibration`.
        ``adata`` and ``world_model_kwargs`` must be what the members were trained with. Costs
        ``n_folds x members_per_fold`` trainings. Sets and returns ``self.calibration``.
        """
        from bioworld.data import leave_targets_out, normalize
        from bioworld.data import mean_deltas

        ref = self.members[0]
        _check_training_data(adata, ref)
        if isinstance(members_per_fold, bool) or not isinstance(members_per_fold, (int, np.integer)) \
                or not 1 <= members_per_fold <= len(self.members):
            raise BioworldError(f"members_per_fold={members_per_fold!r}; expected a whole number from 1 to "
                                f"{len(self.members)} (the members). Fix: pass e.g. members_per_fold=1")
        levels = [levels] if isinstance(levels, (int, float)) else list(levels)  # checked before any fold is trained
        if not levels:
            raise BioworldError("levels is empty; expected interval levels such as (0.8, 0.9, 0.95). Fix: pass "
                                "levels=(0.8, 0.9, 0.95)")
        levels = [_check_level(level) for level in levels]
        key = ref.meta.get("perturbation_key") or world_model_kwargs.get("perturbation_key", "perturbation")
        if key not in adata.obs.columns:
            raise BioworldError(f"adata.obs has no column {key!r} (the members' perturbation key); found "
                                f"{list(map(str, adata.obs.columns))[:8]}; expected the training AnnData. Fix: pass the "
                                "data the members were trained on")
        labels = adata.obs[key].astype(str).to_numpy()
        trained = set(ref.train_labels)
        X = normalize(adata, ref.registration)
        observed, _ = mean_deltas(X, labels, ref.control)
        observed = {k: v for k, v in observed.items() if k in trained}
        if len(observed) < 3:
            raise BioworldError(f"only {len(observed)} training perturbations; calibration needs at least 3 to hold out. "
                                "Fix: calibrate an ensemble trained on 3 or more perturbations, or use it uncalibrated "
                                "(its intervals are then the members' spread)")
        splits = leave_targets_out(sorted(trained), n_folds=n_folds, seed=split_seed, control=ref.control)
        kwargs = dict(world_model_kwargs)
        kwargs.pop("holdout", None)
        kwargs.update(entities=ref.entity_set, nmf_programs=0)  # the members' slots
        base_config = kwargs.pop("config", None) or ref.train_config.to_dict()
        residuals, names = [], []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(splits) * members_per_fold, desc="calibrating", disable=not progress, leave=False)
        for sp in splits:
            # a combination touching targets of two folds is held out by both: scored once
            test = [lab for lab in sp.test if lab in observed and lab not in names]
            if not test:
                continue
            preds = []
            for m in self.members[:members_per_fold]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    wm = WorldModel(adata, holdout=sorted(set(sp.test) | set(ref.holdout)),
                                    config=_with_seed(base_config, m.train_config.seed), **kwargs)
                    wm.train(progress=False)
                preds.append(np.asarray(wm.predict(test).layers["delta"], dtype=np.float64))
                bar.update(1)
            mean = np.mean(preds, axis=0)
            for i, lab in enumerate(test):
                residuals.append(observed[lab] - mean[i])
            names.extend(test)
        bar.close()
        if len(residuals) < 2:
            raise BioworldError(f"calibration held out fewer than 2 perturbations ({n_folds} folds); expected at least 2 "
                                "residuals to fit intervals. Fix: use more folds (n_folds=) or more perturbations")
        train_deltas = np.stack([observed[k] for k in sorted(observed)])
        self.calibration = Calibration.fit(np.stack(residuals), train_deltas, tuple(levels), n_folds=int(n_folds),
                                           split_seed=int(split_seed), members_per_fold=int(members_per_fold),
                                           held_out=names)
        return self.calibration

    # ------------------------------------------------------------------ queries
    def _interval(self, mean: np.ndarray, sd: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if self.calibration is not None:
            hw = np.broadcast_to(self.calibration.half_width(level), mean.shape)
            info = {"level": float(level), "calibrated": True, "method": self.calibration.method,
                    "n_calibration_perturbations": self.calibration.n_perturbations}
        else:
            hw = normal_quantile(level) * sd
            info = {"level": float(level), "calibrated": False,
                    "method": "model variance only: mean ± z * sd over members (seeds). Uncalibrated and "
                              "usually far too narrow for unseen perturbations; run Ensemble.calibrate()."}
        return mean - hw, mean + hw, info

    def predict(self, perturbations: Sequence[str] | str, *, level: float = 0.9, cells: ad.AnnData | None = None,
                compounds: Mapping[str, str] | None = None, compound_targets: Any = None) -> ad.AnnData:
        """Mean prediction over members with intervals on the delta (``compounds`` / ``compound_targets``: compounds
        given at query time, as in :meth:`WorldModel.predict`).

        Returns :meth:`WorldModel.predict`'s AnnData (``X`` and ``layers['delta']`` averaged over
        members) plus ``layers['delta_sd']`` (spread over members), ``layers['delta_lo']`` /
        ``layers['delta_hi']`` (calibrated interval when :meth:`calibrate` has run, else
        mean ± z·sd, flagged), ``obs['bw_seen']`` (trained on: the calibration was measured on
        unseen perturbations, so intervals of seen ones are conservative) and
        ``uns['bioworld']['interval']``.
        """
        outs = [m.predict(perturbations, cells=cells, compounds=compounds, compound_targets=compound_targets)
                for m in self.members]
        D = np.stack([np.asarray(o.layers["delta"], dtype=np.float64) for o in outs])
        out = outs[0].copy()
        out.X = np.mean([np.asarray(o.X, dtype=np.float64) for o in outs], axis=0).astype(np.float32)
        mean, sd = D.mean(0), D.std(0, ddof=1)
        lo, hi, info = self._interval(mean, sd, level)
        out.layers["delta"] = mean.astype(np.float32)
        out.layers["delta_sd"] = sd.astype(np.float32)
        out.layers["delta_lo"] = lo.astype(np.float32)
        out.layers["delta_hi"] = hi.astype(np.float32)
        out.obs["bw_seen"] = [lab in set(self.members[0].train_labels) for lab in out.obs_names]
        out.uns["bioworld"] = {**out.uns["bioworld"], "interval": info, "n_members": len(self.members),
                               "seeds": [int(m.train_config.seed) for m in self.members]}
        return out

    def counterfactual(self, cells: ad.AnnData, interventions: Sequence[str] | str, *, level: float = 0.9) -> ad.AnnData:
        """:meth:`WorldModel.counterfactual` averaged over members, with the members' spread.

        Per cell: ``X`` / ``layers['delta']`` mean over members, ``layers['delta_sd']`` spread over
        members (the same keys as :meth:`predict`); ``obs`` / ``obsm`` as in
        :meth:`WorldModel.counterfactual` (the cells' annotations kept, ``obsm['bw_entity_shift']``
        the members' mean shift). Per intervention, the mean delta over the
        cells and its interval are in ``uns['bioworld']['population']`` ``{spec: {mean, lo, hi, sd}}``
        (``[G]`` arrays). Calibration was measured on held-out genetic / compound perturbations; for
        ``silence:`` it is a transfer, not a measurement (``uns['bioworld']['interval']`` says so).
        """
        from bioworld.query._counterfactual import explain_shifts

        outs = [m.counterfactual(cells, interventions) for m in self.members]
        from bioworld.query._anndata import ENTITY_SHIFT, effects_frame

        D = np.stack([np.asarray(o.layers["delta"], dtype=np.float64) for o in outs])  # [M, rows, G]
        out = outs[0].copy()
        out.X = np.mean([np.asarray(o.X, dtype=np.float64) for o in outs], axis=0).astype(np.float32)
        out.layers["delta"] = D.mean(0).astype(np.float32)
        out.layers["delta_sd"] = D.std(0, ddof=1).astype(np.float32)
        shift = np.mean([np.asarray(o.obsm[ENTITY_SHIFT]) for o in outs], axis=0).astype(np.float32)
        out.obsm[ENTITY_SHIFT] = pd.DataFrame(shift, index=out.obs_names, columns=outs[0].obsm[ENTITY_SHIFT].columns)
        names = list(self.members[0].entity_names)
        spec_col = out.obs["bw_intervention"].to_numpy()
        population, effects = {}, {}
        info: dict[str, Any] = {}
        for spec in dict.fromkeys(spec_col):
            rows = spec_col == spec
            per_member = D[:, rows].mean(1)  # [M, G]
            pm, ps = per_member.mean(0), per_member.std(0, ddof=1)
            lo, hi, info = self._interval(pm, ps, level)
            population[spec] = {"mean": pm.astype(np.float32), "sd": ps.astype(np.float32),
                                "lo": lo.astype(np.float32), "hi": hi.astype(np.float32)}
            effects[spec] = effects_frame(explain_shifts(shift[rows], names))
        if any(str(s).startswith("silence:") for s in population) and info.get("calibrated"):
            info = {**info, "note": "calibrated on held-out genetic/compound perturbations; for silence: a transfer"}
        out.uns["bioworld"] = {**out.uns["bioworld"], "entity_effects": effects, "population": population,
                               "interval": info, "n_members": len(self.members)}
        return out

    # ------------------------------------------------------------------ persistence
    def to(self, device: str) -> "Ensemble":
        """Answer queries on ``device`` (every member; see :meth:`WorldModel.to`). Returns the ensemble."""
        for m in self.members:
            m.to(device)
        return self

    def save(self, directory: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Members in ``member_<k>/`` (each a normal model folder) and ``ensemble.json`` (atomic)."""
        from bioworld._atomic import write_text

        d = Path(directory)
        if not overwrite and (d / ENSEMBLE_META).exists():
            raise CheckpointError(f"{str(d)!r} already holds an ensemble; pass overwrite=True to replace it")
        d.mkdir(parents=True, exist_ok=True)
        for k, m in enumerate(self.members):
            m.save(d / f"member_{k}")
        meta = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "n_members": len(self.members),
                "members": [f"member_{k}" for k in range(len(self.members))],
                "seeds": [int(m.train_config.seed) for m in self.members],
                "calibration": None if self.calibration is None else self.calibration.to_dict()}
        write_text(d / ENSEMBLE_META, json.dumps(meta, indent=1) + "\n", what="ensemble file")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Ensemble":
        """Load an ensemble folder written by :meth:`save` (each member checked as by WorldModel.load)."""
        from bioworld.train.checkpoint import read_json

        d = Path(directory)
        path = d / ENSEMBLE_META
        if not path.is_file():
            single = (d / "bioworld.json").is_file()
            raise CheckpointError(f"{str(d)!r} holds no {ENSEMBLE_META}; expected a folder written by Ensemble.save"
                                  + ("; it holds one model (bioworld.json): load it with bioworld.WorldModel.load"
                                     if single else ""))
        meta = read_json(path, "ensemble record")
        if not isinstance(meta, dict) or meta.get("format") != ENSEMBLE_FORMAT or not isinstance(meta.get("members"), list):
            raise CheckpointError(f"{str(path)!r} is not a bioworld ensemble record (format {meta.get('format') if isinstance(meta, dict) else None!r})")
        version = meta.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= ENSEMBLE_VERSION:
            raise CheckpointError(f"{str(path)!r} has version {version!r}; expected an integer from 1 to {ENSEMBLE_VERSION} "
                                  "(the versions this bioworld reads). Restore the folder, or install the bioworld that wrote it.")
        names = meta["members"]
        root = d.resolve()
        for name in names:
            member = (d / name) if isinstance(name, str) else None
            if (member is None or not name or Path(name).is_absolute() or Path(name).name != name
                    or name in (".", "..") or member.resolve().parent != root):
                raise CheckpointError(f"{str(path)!r} lists member {name!r}; expected the name of a folder directly inside "
                                      f"{str(d)!r} (such as 'member_0'), never a path that leaves it. Restore the folder.")
        if len(set(names)) != len(names) or meta.get("n_members", len(names)) != len(names):
            raise CheckpointError(f"{str(path)!r} lists {len(names)} members ({len(set(names))} distinct) but records "
                                  f"n_members={meta.get('n_members')!r}; the ensemble record is inconsistent. Restore the folder.")
        members = [WorldModel.load(d / name) for name in names]
        cal = None
        if meta.get("calibration") is not None:
            try:
                cal = Calibration.from_dict(meta["calibration"])
            except BioworldError as e:
                raise CheckpointError(f"{str(path)!r}: {e}") from None
            scale = np.asarray(cal.gene_scale)
            q = np.asarray(list(cal.quantiles.values()), dtype=float)
            if scale.shape != (len(members[0].genes),) or not np.isfinite(scale).all() or (scale < 0).any() \
                    or not np.isfinite(q).all() or (q < 0).any():
                raise CheckpointError(f"{str(path)!r}: calibration holds gene_scale of shape {scale.shape} and quantiles "
                                      f"{q.tolist()[:4]}; expected {len(members[0].genes)} finite, non-negative gene scales "
                                      "and finite, non-negative quantiles. Restore the folder or calibrate again.")
        return cls(members, cal)

    def __repr__(self) -> str:
        cal = "calibrated" if self.calibration is not None else "uncalibrated"
        return f"Ensemble({len(self.members)} members, seeds {[m.train_config.seed for m in self.members]}, {cal})"

