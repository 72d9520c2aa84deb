"""Training: the loop, data loading workers, the weight EMA, mixed precision, data parallelism and their settings."""

from diffscale.training.data import DataLoadingError, IndexedSource
from diffscale.training.distributed import DistributedContext
from diffscale.training.ema import ExponentialMovingAverage
from diffscale.training.loop import BatchSource, NonFiniteTrainingError, StepRecord, Trainer
from diffscale.training.settings import TrainingSettings

__all__ = [
    "BatchSource",
    "DataLoadingError",
    "DistributedContext",
    "ExponentialMovingAverage",
    "IndexedSource",
    "NonFiniteTrainingError",
    "StepRecord",
    "Trainer",
    "TrainingSettings",
]
