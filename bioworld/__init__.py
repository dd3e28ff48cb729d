"""bioworld: a biological perturbation world model.

Single-cell expression is grouped into entities (pathways, programs, regulons); perturbations are
actions; an entity-masked, action-conditioned JEPA learns how actions move the entity latents.

>>> import bioworld as bw
>>> adata = bw.data.load_papalexi()
>>> wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control")
"""

from bioworld import errors as errors
from bioworld._lazy import lazy_exports
from bioworld._version import __version__ as __version__

_getattr, __dir__ = lazy_exports(
    __name__,
    {
        "WorldModel": "._world_model",
        "Ensemble": "._ensemble",
        "design": ".query._design",
    },
)

_SUBPACKAGES = {"data", "entities", "actions", "model", "train", "query", "eval", "report", "pl", "tl"}


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    return _getattr(name)
