"""Training: typed config, the JEPA training loop, checkpoints."""

from bioworld.train.checkpoint import load_checkpoint, save_checkpoint
from bioworld.train.config import TrainConfig
from bioworld.train.trainer import TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit", "load_checkpoint", "save_checkpoint"]
