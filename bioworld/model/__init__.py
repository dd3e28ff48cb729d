"""Pure torch modules of the world model (no AnnData, no training loop)."""

from bioworld.model.config import JEPAConfig
from bioworld.model.jepa import JEPA, ActionBatch, JEPABatch, LossOutput, LossWeights, energy_distance

__all__ = ["JEPA", "JEPAConfig", "ActionBatch", "JEPABatch", "LossOutput", "LossWeights", "energy_distance"]
