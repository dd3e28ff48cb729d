"""``bioworld demo``: train on the bundled Papalexi screen, ask questions, write the HTML report.

The trained model is cached in ``<out_dir>/model`` with a key (sha256 of the bundled h5ad's bytes
+ the training config + the bioworld version) in ``<out_dir>/model/demo_key.json``; a second run
with the same key loads it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEMO_COUNTERFACTUALS", "DEMO_GOAL", "run_demo"]

DATA_NAME = "perturbseq/papalexi2021_thp1_ko.h5ad"
#: Interventions whose counterfactual effect on control cells the demo explains.
DEMO_COUNTERFACTUALS = ("silence:HALLMARK_INTERFERON_GAMMA_RESPONSE", "STAT1", "IFNGR1+IRF1", "silence:JAK-STAT")
#: The question the demo's target prioritisation answers.
DEMO_GOAL = "down:HALLMARK_INTERFERON_GAMMA_RESPONSE"
N_COUNTERFACTUAL_CELLS = 300
N_PRIORITIZE_CELLS = 1000
KEY_FILE = "demo_key.json"
SEED = 0


#: The demo's fix for a failed fit check: its only training option is --max-steps (no --seed / --restarts).
DEMO_FIT_FAILED_FIX = ("leave out --max-steps (the default length) or raise it, or train your own model with "
                       "'bioworld train papalexi' and its seed options")
DEMO_RESTARTS = 0  # extra training runs (next seeds) when a run did not learn the strong effects (opt-in; see FIT_SEEDS.md)

def _demo_key(data_file: Path, train_config: dict[str, Any]) -> dict[str, Any]:
    """What decides the cached model: the data bytes, the training config and the code version."""
    import bioworld

    h = hashlib.sha256()
    with open(data_file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    config_json = json.dumps(train_config, sort_keys=True)
    return {
        "data_sha256": h.hexdigest(),
        "train_config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
        "train_config": train_config,
        "bioworld_version": str(bioworld.__version__),
    }


def _cached_model(model_dir: Path, key: dict[str, Any], log) -> Any | None:
    """The cached model when its stored key equals ``key``; None (with the reason logged) otherwise."""
    import bioworld as bw
    from bioworld.errors import CheckpointError

    key_path = model_dir / KEY_FILE
    if not key_path.is_file():
        return None
    try:
        stored = json.loads(key_path.read_text())
    except json.JSONDecodeError:
        log(f"ignoring unreadable cache key {key_path}; retraining")
        return None
    if stored != key:
        log("cached model was trained on other data or with another config; retraining")
        return None
    try:
        return bw.WorldModel.load(model_dir)
    except CheckpointError as exc:
        log(f"cached model in {model_dir} cannot be loaded ({exc}); retraining")
        return None


def _write_key(model_dir: Path, key: dict[str, Any]) -> None:
    from bioworld._atomic import write_text

    write_text(model_dir / KEY_FILE, json.dumps(key, indent=2, sort_keys=True))


def run_demo(out_dir: str | os.PathLike = "bioworld-demo", *, max_steps: int | None = None, progress: bool = True) -> Path:
    """Train (or reuse) a world model on the bundled Papalexi screen and write the HTML report.

    Stages: load the data; train with the default :class:`~bioworld.train.TrainConfig` (``max_steps``
    overrides its steps; a run whose :meth:`~bioworld.WorldModel.training_fit` shows it did not learn
    the strong training effects is repeated with the next seed, up to ``DEMO_RESTARTS`` times) or load
    the cached model of ``<out_dir>/model``; counterfactuals of
    :data:`DEMO_COUNTERFACTUALS` on 300 control cells; target prioritisation for
    :data:`DEMO_GOAL` on up to 1000 control cells; the report.

    Returns
    -------
    Absolute path of ``<out_dir>/report.html`` (also printed as the last line, ``Report: <path>``).
    ``<out_dir>`` also holds ``ranked_interventions.csv``, ``counterfactuals.h5ad`` and the model.
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    import bioworld as bw
    from bioworld.data import bundled_path, load_papalexi
    from bioworld.report import write_report
    from bioworld.report._h5ad import write_h5ad_atomic
    from bioworld.train import TrainConfig

    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        from bioworld.errors import BioworldError

        raise BioworldError(f"demo output {str(out)!r} is a file; expected a folder. Fix: pass another --out.")
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    stages = ["loading the bundled Papalexi screen", "training the world model", "counterfactuals on control cells",
              "prioritising targets", "writing the report"]
    bar = tqdm(total=len(stages), desc=stages[0], unit="stage", disable=not progress, file=sys.stderr,
               bar_format="{desc:<44} {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}", position=0, leave=True)

    def log(message: str) -> None:
        if progress:
            bar.write(message, file=sys.stderr)

    def stage(i: int, desc: str | None = None) -> None:
        bar.update(1)
        bar.set_description_str(desc or stages[i], refresh=True)

    try:
        adata = load_papalexi()
        config = TrainConfig() if max_steps is None else replace(TrainConfig(), max_steps=int(max_steps))
        key = _demo_key(bundled_path(DATA_NAME), config.to_dict())
        wm = _cached_model(model_dir, key, log)
        stage(1, "loading the cached world model" if wm is not None else None)
        if wm is None:
            from bioworld.train.fit_check import train_until_fit

            wm = train_until_fit(lambda cfg: bw.WorldModel(adata, perturbation_key="perturbation", control="control",
                                                           config=cfg),
                                 config, restarts=DEMO_RESTARTS, progress=progress, log=log,
                                 fix=DEMO_FIT_FAILED_FIX)
            wm.save(model_dir, overwrite=True)
            _write_key(model_dir, key)
        else:
            log(f"reusing the model cached in {model_dir} (same data and config)")

        stage(2)
        labels = adata.obs["perturbation"].astype(str).to_numpy()
        ctrl = np.flatnonzero(labels == "control")
        rng = np.random.default_rng(SEED)
        cf_cells = adata[np.sort(rng.choice(ctrl, min(N_COUNTERFACTUAL_CELLS, len(ctrl)), replace=False))].copy()
        cf = wm.counterfactual(cf_cells, list(DEMO_COUNTERFACTUALS))
        write_h5ad_atomic(cf, out / "counterfactuals.h5ad")

        stage(3)
        pr_cells = adata[np.sort(rng.choice(ctrl, min(N_PRIORITIZE_CELLS, len(ctrl)), replace=False))].copy()
        result = wm.prioritize(pr_cells, DEMO_GOAL)

        stage(4)
        report = write_report(result, out, counterfactuals=cf, model=wm,
                              title="bioworld demo: what lowers the interferon-gamma response of THP-1 cells?")
        bar.update(1)
        bar.set_description_str("done", refresh=True)
    finally:
        bar.close()
    report = report.resolve()
    print(f"Report: {report}", flush=True)
    return report
