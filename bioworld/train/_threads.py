"""One thread count for every numerical library a run uses (determinism across environments)."""

from __future__ import annotations

import torch

__all__ = ["pin_threads"]


def pin_threads(n: int) -> None:
    """Use ``n`` threads in torch and in every BLAS / OpenMP library loaded in the process.

    ``torch.set_num_threads`` alone leaves numpy's BLAS (OpenBLAS, used by the samplers and the
    statistics) at the count it read from ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / the
    core count when it was loaded; its summation order then depends on the environment, and the
    same seed gave different weights (up to 5e-6) with ``OMP_NUM_THREADS=1`` and unset. Pinning
    every library through threadpoolctl makes the result depend on ``TrainConfig.num_threads``
    only. The setting stays for the process, as ``torch.set_num_threads`` does.
    """
    import importlib

    from threadpoolctl import threadpool_limits

    # threadpoolctl reaches only libraries already loaded: load the BLAS of scipy (its own OpenBLAS,
    # used by randomized SVD of the gene features) and scikit-learn's OpenMP first
    for module in ("numpy.linalg", "scipy.linalg", "sklearn.utils.extmath"):
        try:
            importlib.import_module(module)
        except ImportError:  # pragma: no cover - optional at this layer
            pass
    n = int(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    threadpool_limits(limits=n)
