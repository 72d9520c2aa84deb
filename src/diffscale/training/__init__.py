"""Training: the loop, the weight EMA, mixed precision, data parallelism and their settings."""

from diffscale.training.distributed import DistributedContext
from diffscale.training.ema import ExponentialMovingAverage
from diffscale.training.loop import BatchSource, NonFiniteTrainingError, StepRecord, Trainer
from diffscale.training.settings import TrainingSettings

__all__ = [
    "BatchSource",
    "DistributedContext",
    "ExponentialMovingAverage",
    "NonFiniteTrainingError",
    "StepRecord",
    "Trainer",
    "TrainingSettings",
]
