"""Multi-process (data-parallel) training on top of :func:`bioworld.train.fit`.

:func:`bioworld.train.fit` is already distributed-aware: when a ``torch.distributed`` process group
is initialised, every rank draws the same global batch from the shared seed, keeps its shard of
the perturbation groups / self pairs, and gradients are averaged with all-reduce, so the ranks
hold identical parameters after every step. This module only starts and tears down process groups.

Three ways in
-------------
1. **Spawn on one machine** (CPU, gloo), e.g. from a script or a test::

       from bioworld.train.distributed import train_distributed
       results = train_distributed(2, my_fn, arg1, arg2)   # my_fn(rank, world, arg1, arg2) -> picklable
       # results[r] is what rank r returned

2. **torchrun** (one process per core / node), training a world model and saving it from rank 0::

       torchrun --standalone --nproc_per_node=4 -m bioworld.train.distributed papalexi \\
           --out papalexi_ddp --max-steps 800 --holdout STAT1

   Several nodes (run the same line on every node, ``--node_rank`` 0..N-1)::

       torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
           --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 \\
           -m bioworld.train.distributed DATA.h5ad --out MODEL_DIR --backend gloo

3. **Your own process group**: call :func:`init_from_env` (or ``dist.init_process_group``) in each
   process, build the same :class:`bioworld.WorldModel` with the same config on every rank, call
   ``wm.train()``, and save only where :func:`is_main_process` is true.

GPUs / NCCL
-----------
``TrainConfig.device`` places the module and every batch on a device (``"cuda"`` = ``cuda:LOCAL_RANK``
under torchrun); after training the module stays there (queries run on it; checkpoints are written
from CPU copies). One process per GPU on each node::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \
        --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 \
        -m bioworld.train.distributed DATA.h5ad --out MODEL_DIR --backend nccl

(``--backend nccl`` implies ``device="cuda"``). ``nccl`` is refused with an explanation where torch
sees no GPU. The GPU path has not been run by bioworld's own tests or benchmarks (the development
machines have no GPU); the CPU/gloo path is tested (``tests/test_distributed.py``).

Each process sets ``torch`` intra-op threads from ``TrainConfig.num_threads`` (0 = auto, half the
cores): with N processes on one machine pass ``--threads`` so that N x threads <= cores.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from bioworld.errors import BioworldError

__all__ = ["DataParallelLoss", "free_port", "init_from_env", "is_main_process", "main", "train_distributed"]

BUCKET_MB = 25  # DistributedDataParallel gradient bucket size (torch's default)


class DataParallelLoss(torch.nn.Module):
    """``module.loss(batch, weights)`` as the forward of a :class:`~torch.nn.parallel.DistributedDataParallel`.

    DDP averages gradients over ranks in buckets of ``BUCKET_MB`` MB, all-reduced while the backward
    pass is still running (one collective per bucket instead of one per parameter). Parameters a
    rank's shard does not use in a step (a dropped own embedding, the interaction head of a batch
    without combinations) count as zero gradients: the loss adds ``0 x`` their sum, so every parameter
    is in every step's graph and DDP skips the per-step search for unused ones (its effect on the
    2-process speed-up: SPEED.md, section (f)). Buffers are constants and not
    broadcast each step. The bucket order and the reduction are fixed, so a run with a given world
    size is deterministic.
    """

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel

        self.inner = module
        self.ddp = DistributedDataParallel(
            _LossForward(module), device_ids=[torch.device(device).index or 0] if device.startswith("cuda") else None,
            bucket_cap_mb=BUCKET_MB, broadcast_buffers=False, find_unused_parameters=False,
        )

    def forward(self, batch: Any, weights: Any) -> Any:
        from bioworld.model.jepa import LossOutput

        total, terms, monitor = self.ddp(batch, weights)
        return LossOutput(total=total, terms=terms, monitor=monitor)


class _LossForward(torch.nn.Module):
    """The JEPA loss as ``forward`` (DDP hooks need the step to go through a forward call); plain outputs."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: Any, weights: Any) -> tuple:
        out = self.module.loss(batch, weights)
        # every trainable parameter enters the graph (a zero gradient where the shard does not use it), so
        # DDP need not search the autograd graph for unused parameters at every step
        unused = sum(p.sum() for p in self.module.parameters() if p.requires_grad) * 0.0
        return out.total + unused, out.terms, out.monitor


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_backend(backend: str) -> str:
    if backend == "nccl":
        if not (torch.cuda.is_available() and dist.is_nccl_available()):
            raise BioworldError(
                "backend='nccl' needs CUDA GPUs and a torch build with NCCL (this one: cuda "
                f"{'available' if torch.cuda.is_available() else 'not available'}, nccl "
                f"{'available' if dist.is_nccl_available() else 'not available'}); use backend='gloo' on CPUs"
            )
        return backend
    if backend not in ("gloo", "mpi"):
        raise BioworldError(f"backend={backend!r}; expected 'gloo' (or 'mpi' where torch was built with it)")
    if backend == "gloo" and not dist.is_gloo_available():
        raise BioworldError("this torch build has no gloo backend; install a torch build with distributed support")
    return backend


def is_main_process() -> bool:
    """True on rank 0, or when no process group is initialised (the process that should save/report)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_from_env(backend: str = "gloo", timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``). Returns ``(rank, world_size)``; ``(0, 1)`` and no group when
    ``WORLD_SIZE`` is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(_check_backend(backend), timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


_TENSOR_MARK = "__bioworld_tensor__"


def _encode_result(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` with every array / tensor replaced by a reference into ``tensors`` (JSON-able rest)."""
    import numpy as np

    if isinstance(obj, torch.Tensor) or isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        is_numpy = isinstance(obj, np.ndarray)
        tensors[key] = (torch.from_numpy(np.ascontiguousarray(obj)) if is_numpy else obj.detach().cpu()).contiguous()
        return {_TENSOR_MARK: key, "numpy": is_numpy}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise BioworldError(f"a distributed result holds a dict with non-string keys {list(obj)[:3]}; expected "
                                "JSON-like results (str keys, lists, numbers, strings, arrays / tensors)")
        return {k: _encode_result(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_result(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise BioworldError(f"a distributed result holds a {type(obj).__name__}; expected JSON-like results (dicts with "
                        "str keys, lists, numbers, strings) and numpy arrays / torch tensors (exchanged as safetensors)")


def _decode_result(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_MARK, "numpy"}:
            t = tensors[obj[_TENSOR_MARK]]
            return t.numpy() if obj["numpy"] else t
        return {k: _decode_result(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_result(v, tensors) for v in obj]
    return obj


def _write_result(result_dir: str, rank: int, out: Any) -> None:
    """A rank's return value as ``rank<r>.safetensors`` (arrays) + ``rank<r>.json`` (the rest); no pickle."""
    import json

    from safetensors.torch import save_file

    from bioworld._atomic import write_files

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode_result(out, tensors)
    base = os.path.join(result_dir, f"rank{rank}")
    write_files([(base + ".safetensors", lambda tmp: save_file(tensors, tmp)),
                 (base + ".json", lambda tmp: Path(tmp).write_text(json.dumps(tree)))])


def _read_result(result_dir: str, rank: int) -> Any:
    import json

    from safetensors.torch import load_file

    base = os.path.join(result_dir, f"rank{rank}")
    if not os.path.exists(base + ".json"):
        raise RuntimeError(f"distributed training: rank {rank} exited without a result")
    tensors = load_file(base + ".safetensors")
    return _decode_result(json.loads(Path(base + ".json").read_text()), tensors)


def _worker(rank: int, world: int, port: int, backend: str, fn: Callable[..., Any], args: tuple,
            result_dir: str, threads: int | None) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(rank), str(world), str(rank)
    if threads:
        torch.set_num_threads(threads)
    # results go through files, not a pipe: a large result would block a pipe the parent only reads after join
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=600))
    try:
        out = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
    _write_result(result_dir, rank, out)


def train_distributed(world_size: int, fn: Callable[..., Any], *args: Any, backend: str = "gloo",
                      port: int | None = None, threads: int | None = None) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` local processes sharing a process group.

    ``fn`` must be importable (a module-level function) and build its own model/data; its return
    values are returned in rank order and must be JSON-like (dicts with str keys, lists, numbers,
    strings) with numpy arrays / torch tensors anywhere inside: they come back through
    ``rank<r>.safetensors`` + ``rank<r>.json`` files, never pickle (the spawn start method itself
    passes ``fn`` and ``args`` to the children, which are this process's own). Inside ``fn``, ``bw.WorldModel.train()``
    / :func:`bioworld.train.fit` train data-parallel automatically. ``threads`` sets torch threads
    per process before ``fn`` runs (``fit`` then applies ``TrainConfig.num_threads``).
    """
    import tempfile

    import torch.multiprocessing as mp

    if world_size < 1:
        raise BioworldError(f"world_size={world_size}; expected at least 1 process")
    backend = _check_backend(backend)
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="bioworld-ddp-") as result_dir:
        # a rank that raises makes start_processes raise ProcessRaisedException with its traceback
        mp.start_processes(_worker, args=(world_size, port, backend, fn, args, result_dir, threads),
                           nprocs=world_size, join=True, start_method="spawn")
        out = [_read_result(result_dir, r) for r in range(world_size)]
    return out


if __name__ == "__main__":  # the torchrun entry point lives in ``bioworld.distributed`` (it builds a WorldModel)
    from bioworld.distributed import main

    sys.exit(main())
