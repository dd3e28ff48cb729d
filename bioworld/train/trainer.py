"""The training loop: JEPA step, EMA schedule, collapse monitor, resumable state, optional DDP.

Multi-process training (gloo on CPU, nccl on GPUs): every rank draws the same global batch from the
shared seed and keeps its shard; ``DistributedDataParallel`` averages gradients (bucketed, overlapped
with the backward pass), so N processes follow the single-process trajectory up to batch-statistic terms.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from bioworld.data.collate import BlockBufferSampler, TransitionSampler
from bioworld.errors import BioworldError, TrainingError
from bioworld.model.jepa import JEPA, JEPABatch, LossWeights
from bioworld.train.checkpoint import clear_train_state, load_train_state, save_train_state
from bioworld.train.config import TrainConfig


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    cells_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    validation: list[dict[str, float]] = field(default_factory=list)  # held-in validation error per pass


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def ema_at(step: int, cfg: TrainConfig) -> float:
    return cfg.ema_start + (cfg.ema_end - cfg.ema_start) * min(1.0, step / max(1, cfg.max_steps))


def loss_weights(cfg: TrainConfig) -> LossWeights:
    return cfg.loss


def _to_batch(d: dict[str, Any], keep: np.ndarray | None = None, device: str = "cpu") -> JEPABatch:
    def sel(t: torch.Tensor) -> torch.Tensor:
        t = t if keep is None else t[torch.from_numpy(keep)]
        return t if device == "cpu" else t.to(device, non_blocking=True)

    act = d["action"]
    if keep is not None:
        act = act.index(torch.from_numpy(keep))
    if device != "cpu":
        act = act.to(device, non_blocking=True)
    return JEPABatch(
        x_src=sel(d["x_src"]), x_tgt=sel(d["x_tgt"]), action=act,
        context_mask=sel(d["context_mask"]), target_mask=sel(d["target_mask"]),
        gene_mask=sel(d["gene_mask"]), group=sel(d["group"]),
        clamp_mask=sel(d["clamp_mask"]) if "clamp_mask" in d else None,
    )


def _shard(group: torch.Tensor, rank: int, world: int) -> np.ndarray:
    g = group.numpy()
    idx = np.arange(len(g))
    mine = np.where(g >= 0, g % world == rank, idx % world == rank)
    return np.flatnonzero(mine)


def _mean_over_ranks(rec: dict[str, float], world: int, device: str = "cpu") -> dict[str, float]:
    """Average the logged loss terms / monitors over ranks (a non-finite value on any rank stays non-finite)."""
    keys = [k for k in rec if k != "step"]
    t = torch.tensor([float(rec[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {"step": rec["step"], **{k: float(v) / world for k, v in zip(keys, t.tolist())}}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def fit(
    module: JEPA,
    sampler: TransitionSampler | BlockBufferSampler,
    cfg: TrainConfig,
    *,
    state_dir: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    data_key: dict[str, Any] | None = None,
    validate: Callable[[JEPA], float] | None = None,
) -> TrainResult:
    """Train ``module`` in place. With ``state_dir``, resumes from and writes resumable state.

    ``data_key``: a JSON-able fingerprint of what is trained on (data hash, gene panel, entities,
    action table); stored with the state, and a state written for another fingerprint is refused
    instead of resumed on other data.

    ``validate(module) -> error`` (single process only): called every ``cfg.eval_every`` steps;
    training stops once ``cfg.patience`` calls in a row brought no 1% lower error (not before
    ``cfg.min_steps``) and the weights of the best call are kept. A resumed run starts the
    early-stopping record afresh.
    """
    from bioworld.train._threads import pin_threads

    pin_threads(cfg.resolved_threads())  # torch and every BLAS / OpenMP pool: results depend on num_threads only
    device = cfg.resolved_device()
    module.to(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step_loss = module.loss
    rng = np.random.default_rng(cfg.seed)
    weights = loss_weights(cfg)
    start, history, resumed = (0, [], None) if state_dir is None else _resume(state_dir, cfg, data_key, module, opt,
                                                                            rng, device)
    if hasattr(sampler, "set_step"):  # buffered (out-of-core) samplers pick their buffer from the step
        sampler.set_step(start)
    module.train()
    stopping = _EarlyStopping(cfg)
    if world > 1:
        validate = None
        from bioworld.train.distributed import DataParallelLoss

        # after a resume every rank loaded the same state; DDP checks the parameters agree across ranks
        step_loss = DataParallelLoss(module, device)
    last, low_std_steps, n_cells, t0 = start, 0, 0, time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=start, desc="training", disable=not progress or rank != 0,
               dynamic_ncols=True, leave=False)
    for step in range(start, cfg.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        raw = sampler.sample(rng)
        keep = _shard(raw["group"], rank, world) if world > 1 else None
        batch = _to_batch(raw, keep, device)
        out = step_loss(batch, weights)
        opt.zero_grad(set_to_none=True)
        out.total.backward()  # with world > 1: DistributedDataParallel averages gradients, bucketed, during backward
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        module.ema_update(ema_at(step, cfg))
        n_cells += int(raw["x_src"].shape[0])
        rec = {"step": step + 1, "loss": float(out.total.detach()), **{k: float(v) for k, v in out.terms.items()}, **out.monitor}
        if world > 1:  # one view of the global batch on every rank: the stop checks below must agree, or a rank hangs
            rec = _mean_over_ranks(rec, world, device)
        low_std_steps = _check_step(rec, step, cfg, low_std_steps)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            _log(rec, history, bar, on_step)
        bar.update(1)
        last = step + 1
        if validate is not None and (step + 1) % max(1, cfg.eval_every) == 0 \
                and stopping.update(step + 1, validate(module), module):
            break
        if state_dir is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < cfg.max_steps and rank == 0:
            _save_state(state_dir, module, opt, rng, device, {"step": step + 1, "history": history,
                                                               "config": cfg.to_dict(), "data": data_key})
    bar.close()
    stopping.restore_best(module)
    module.eval()  # stays on cfg.device: queries run where training ran (checkpoints copy to the CPU)
    wall = time.perf_counter() - t0
    if state_dir is not None and rank == 0:
        clear_train_state(state_dir)
    return TrainResult(steps=last, wall_s=wall, cells_per_s=n_cells / max(wall, 1e-9),
                       history=history, resumed_from=resumed, validation=stopping.history)


def _log(rec: dict[str, float], history: list, bar: Any, on_step: Callable[[int, dict[str, float]], None] | None) -> None:
    """Keep a logged step's record, show it on the progress bar and pass it to ``on_step``."""
    history.append(rec)
    bar.set_postfix(loss=f"{rec['loss']:.3f}", expr=f"{rec['expr']:.3f}", lat=f"{rec['latent']:.3f}",
                    std=f"{rec['target_std']:.2f}", rank=f"{rec['eff_rank']:.1f}", refresh=False)
    if on_step is not None:
        on_step(int(rec["step"]), rec)


def _resume(state_dir: str | Path, cfg: TrainConfig, data_key: dict[str, Any] | None, module: JEPA,
            opt: torch.optim.Optimizer, rng: np.random.Generator, device: str) -> tuple[int, list, int | None]:
    """Load a resumable state from ``state_dir`` into the module, optimiser and generators, refusing a state
    of another config or other data. Returns ``(start step, history, resumed_from)`` (``0, [], None``: none)."""
    loaded = load_train_state(state_dir)
    if loaded is None:
        return 0, [], None
    tensors, state = loaded
    saved_cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
    try:  # a state written with the flat config of earlier versions compares in today's form
        saved_cfg = TrainConfig.from_dict(saved_cfg).to_dict()
    except BioworldError:
        pass
    now_cfg = cfg.to_dict()
    if saved_cfg != now_cfg:
        diff = sorted(k for k in set(saved_cfg) | set(now_cfg) if saved_cfg.get(k) != now_cfg.get(k))
        raise TrainingError(
            f"{state_dir} holds a training state for a different config (differs in {diff}: saved "
            f"{ {k: saved_cfg.get(k) for k in diff} }, now { {k: now_cfg.get(k) for k in diff} }); "
            "resume with the same config, or delete train_state.json and train_state.safetensors "
            "there (or pass another state_dir) to train from scratch"
        )
    saved_key = state.get("data")
    if data_key is not None and saved_key != json.loads(json.dumps(data_key)):
        what = sorted(k for k in set(data_key) | set(saved_key or {})
                      if (saved_key or {}).get(k) != json.loads(json.dumps(data_key)).get(k))
        raise TrainingError(
            f"{state_dir} holds a training state for other data or another setup (differs in {what}); "
            "expected the data, entities and holdout of the interrupted run. Resume with those, or delete "
            "train_state.json and train_state.safetensors there to train from scratch"
        )
    try:
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer(opt, tensors)
    except (RuntimeError, KeyError, ValueError) as e:
        raise TrainingError(
            f"{state_dir} holds a training state that does not fit this model ({str(e).splitlines()[0][:200]}); "
            "delete train_state.json and train_state.safetensors there to train from scratch"
        ) from None
    torch.set_rng_state(tensors["torch_rng"])
    if device != "cpu" and "cuda_rng" in tensors:
        torch.cuda.set_rng_state(tensors["cuda_rng"], device)
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"]), list(state["history"]), int(state["step"])


def _save_state(state_dir: str | Path, module: JEPA, opt: torch.optim.Optimizer, rng: np.random.Generator,
                device: str, state: dict[str, Any]) -> None:
    """Write the resumable state: weights, optimiser, generators and ``state`` (step, history, config, data key)."""
    tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
    tensors.update(_optimizer_tensors(opt))
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    if device != "cpu":
        tensors["cuda_rng"] = torch.cuda.get_rng_state(device)
    save_train_state(state_dir, tensors, {
        "step": state["step"], "history": state["history"], "config": state["config"],
        "numpy_rng": rng.bit_generator.state, "data": state["data"],
    })


def _check_step(rec: dict[str, float], step: int, cfg: TrainConfig, low_std_steps: int) -> int:
    """Refuse a diverged step or a collapse of the target latents; returns the count of low-std steps in a row."""
    if not all(math.isfinite(v) for k, v in rec.items() if k != "eff_rank"):
        raise TrainingError(
            f"training diverged at step {step + 1} (non-finite loss {rec}); lower the learning rate "
            "(config lr) or check the input for extreme values"
        )
    if rec["target_std"] >= cfg.collapse_std:  # rank-averaged, so every rank decides alike
        return 0
    low_std_steps += 1
    if low_std_steps >= cfg.collapse_patience:
        raise TrainingError(
            f"latent collapse at step {step + 1}: target latents' per-slot std {rec['target_std']:.2e} "
            f"< {cfg.collapse_std:g} for {low_std_steps} steps (effective rank {rec['eff_rank']:.2f}). "
            "Raise w_variance / w_covariance or lower lr in the training config."
        )
    return low_std_steps


class _EarlyStopping:
    """Early stopping on the held-in validation error: the best weights and the record of every call."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.best, self.best_state, self.bad, self.history = math.inf, None, 0, []

    def update(self, step: int, err: float, module: JEPA) -> bool:
        """Record the error after ``step`` steps; True when training should stop (``patience`` calls in a row
        without a 1% lower error, not before ``min_steps`` and not at the last step).

        Only calls at or past ``min_steps`` compete for the best weights: the held-in mean-change error can
        be lowest early, before the strong effects are learned (Papalexi seed 5 kept its step-100 weights
        and failed the fit check), so early weights are never restored."""
        self.history.append({"step": step, "val": err})
        if step < self.cfg.min_steps:
            return False
        if err < self.best * 0.99:
            self.best, self.bad = err, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.bad += 1
        return self.bad >= self.cfg.patience and step >= self.cfg.min_steps and step < self.cfg.max_steps

    def restore_best(self, module: JEPA) -> None:
        """The best weights back, when the last validation was not the best."""
        if self.best_state is not None and self.bad > 0:
            module.load_state_dict(self.best_state)
