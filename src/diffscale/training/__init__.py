"""Training: the loop, the weight EMA and their settings."""

from diffscale.training.ema import ExponentialMovingAverage
from diffscale.training.loop import BatchSource, StepRecord, Trainer, resolve_device
from diffscale.training.settings import TrainingSettings

__all__ = ["BatchSource", "ExponentialMovingAverage", "StepRecord", "Trainer", "TrainingSettings", "resolve_device"]
