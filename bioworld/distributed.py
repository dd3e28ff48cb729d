"""torchrun entry point: data-parallel training of a WorldModel (one process per rank).

    torchrun --standalone --nproc_per_node=N -m bioworld.train.distributed DATA.h5ad --out MODEL_DIR [--backed]

(``-m bioworld.distributed`` is the same entry.) The process-group helpers and
:func:`~bioworld.train.distributed.train_distributed` live in :mod:`bioworld.train.distributed`;
this module sits above the facade because it builds a ``WorldModel``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional, Sequence

import torch
import torch.distributed as dist
import typer

from bioworld.errors import BioworldError
from bioworld.train.distributed import init_from_env


def _cli() -> typer.Typer:
    """The torchrun entry's typer command."""
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})

    @cli.command()
    def run(
        data: Annotated[str, typer.Argument(help="An .h5ad file, or 'papalexi' / 'l1000' for the bundled datasets.")],
        out: Annotated[Path, typer.Option("--out", metavar="MODEL_DIR", help="Model folder (written by rank 0).")],
        entities: Annotated[Optional[List[Path]], typer.Option(metavar="FILE", help="GMT or gene/pathway/weight TSV; repeatable, combined (default: Hallmark + PROGENy).")] = None,
        perturbation_key: Annotated[str, typer.Option(help="obs column with perturbation labels.")] = "perturbation",
        control: Annotated[str, typer.Option(help="Label of unperturbed cells.")] = "control",
        input: Annotated[str, typer.Option("--input", help="'counts' (raw UMI counts) or 'log' (log-normalised).")] = "counts",
        replicate_key: Annotated[Optional[str], typer.Option(help="obs column to pair control and perturbed cells within.")] = None,
        holdout: Annotated[str, typer.Option(help="Comma-separated perturbation labels never shown in training.")] = "",
        config: Annotated[Optional[Path], typer.Option(help="JSON file of TrainConfig fields.")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Training seed (overrides the config).")] = None,
        max_steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (overrides the config).")] = None,
        threads: Annotated[Optional[int], typer.Option(help="torch threads per process (TrainConfig.num_threads); with N processes on one machine keep N x threads <= cores.")] = None,
        backend: Annotated[str, typer.Option(help="'gloo' (CPU) or 'nccl' (one GPU per process; implies --device cuda).")] = "gloo",
        device: Annotated[Optional[str], typer.Option(metavar="auto|cpu|cuda", help="Where each process trains (overrides the config; 'cuda' = cuda:LOCAL_RANK).")] = None,
        backed: Annotated[bool, typer.Option("--backed", help="Leave X on disk and train out of core (block buffer).")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model in --out.")] = False,
    ) -> None:
        """Data-parallel training of a bioworld WorldModel; run under torchrun.

        torchrun --standalone --nproc_per_node=N -m bioworld.train.distributed DATA --out MODEL_DIR
        """
        if input not in ("counts", "log"):
            raise typer.BadParameter(f"{input!r}; expected 'counts' or 'log'", param_hint="--input")
        code = _run(data=data, out=str(out), entities=[str(e) for e in entities] if entities else None,
                    perturbation_key=perturbation_key, control=control, input=input, replicate_key=replicate_key,
                    holdout=holdout, config=None if config is None else str(config), seed=seed, max_steps=max_steps,
                    threads=threads, backend=backend, device=device, backed=backed, overwrite=overwrite)
        raise typer.Exit(code)

    return cli


def _load(data: str, backed: bool = False):
    import anndata as ad

    from bioworld import data as bwdata

    if backed and data not in ("papalexi", "l1000"):
        return bwdata.open_backed(data)
    if data == "papalexi":
        return bwdata.load_papalexi()
    if data == "l1000":
        return bwdata.load_l1000()
    return ad.read_h5ad(data)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bioworld.train.distributed`` (under torchrun); returns the exit code."""
    try:
        _cli()(args=list(sys.argv[1:] if argv is None else argv), prog_name="python -m bioworld.train.distributed",
               standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _run(*, data: str, out: str, entities: list[str] | None, perturbation_key: str, control: str, input: str,
         replicate_key: str | None, holdout: str, config: str | None, seed: int | None, max_steps: int | None,
         threads: int | None, backend: str, device: str | None, backed: bool, overwrite: bool) -> int:
    from bioworld._world_model import WorldModel
    from bioworld.train import TrainConfig

    rank, world = init_from_env(backend)
    try:
        cfg = TrainConfig.from_file(config) if config else TrainConfig()
        over = {k: v for k, v in (("seed", seed), ("max_steps", max_steps), ("num_threads", threads),
                                  ("device", device)) if v is not None}
        if backend == "nccl" and over.get("device", cfg.device) == "cpu":
            over["device"] = "cuda"
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **over})
        out = os.path.abspath(out)
        exists = torch.tensor([int(rank == 0 and os.path.exists(os.path.join(out, "bioworld.json")))])
        if world > 1:  # rank 0's view decides on every rank (no rank may train alone and hang)
            dist.broadcast(exists, src=0)
        if exists.item() and not overwrite:
            raise BioworldError(f"{out!r} already holds a model; pass --overwrite to replace it")
        wm = WorldModel(_load(data, backed), entities=entities, perturbation_key=perturbation_key,
                           control=control, input=input, replicate_key=replicate_key,
                           holdout=[h for h in holdout.split(",") if h], config=cfg)
        wm.train(progress=rank == 0)
        if rank == 0:
            wm.save(out)
            tr = wm.train_result
            print(f"trained {tr.steps} steps on {world} process(es) in {tr.wall_s:.1f} s "
                  f"({tr.cells_per_s:.0f} cells/s global); saved {out}")
        if world > 1:
            dist.barrier()
    except BioworldError as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr)
        return 2
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
