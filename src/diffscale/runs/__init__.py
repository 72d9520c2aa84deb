"""Runs: the Python API over trained models (what the ``diffscale`` command calls).

>>> import diffscale
>>> run = diffscale.load_run("runs/era5_uk", device="auto", weights="ema")
>>> ensemble = run.downscale("coarse.nc", members=32, seed=0, progress=True)   # an xarray.Dataset
>>> scores = diffscale.evaluate(ensemble, truth="era5_t2m.nc")                   # an xarray.Dataset of scores

* :func:`load_run` returns a :class:`Run` (toy data: ``.sample``, ``.likelihood``) or a :class:`ClimateRun`
  (``.downscale``); :func:`prepare_training` and :func:`train` train one from a configuration;
* :func:`initial_config` drafts a downscaling configuration for your files, every data-dependent value measured
  on them (``diffscale init-config``);
* :func:`evaluate` scores a downscaled ensemble against the truth, beside the bilinear baseline;
  :func:`write_report` writes the scores and figures of ``diffscale evaluate``;
* :func:`posthoc_ema` reconstructs a run's EMA of any width from its training snapshots (choosing it by validation
  loss) and :func:`reconstruct_ema` returns one as a state_dict;
* :func:`fit_recalibration` fits a run's spread recalibration on held-out ensembles (applied when it downscales);
* :func:`bias_adjust` maps a coarse input (a climate model's) onto a run's training coarse climatology (QM, QDM);
  :func:`compute_climatology` computes that climatology for a run trained before it was saved with runs.

Bad input raises :class:`~diffscale.validation.ConfigError` (a ValueError) with a one-line message.
"""

from diffscale.runs import plots
from diffscale.runs.bias_adjustment import bias_adjust, compute_climatology, load_climatology
from diffscale.runs.building import build_denoiser, build_model_for, default_run_dir, resolve_run_dir
from diffscale.runs.downscaling import DownscalingJob, check_ensemble_output
from diffscale.runs.evaluation import EvaluationInputs, evaluate, load_inputs, write_report
from diffscale.runs.init_config import InitialConfig, initial_config
from diffscale.runs.likelihood import LikelihoodReport, LikelihoodSettings, likelihood
from diffscale.runs.metrics import MetricsLog, loss_by_sigma_decade
from diffscale.runs.posthoc_ema import EMACandidate, PosthocEMAResult, posthoc_ema, reconstruct_ema
from diffscale.runs.recalibration import Recalibration, fit_recalibration, load_recalibration
from diffscale.runs.run import ClimateRun, Run, load_climate_run, load_run
from diffscale.runs.sampling import sample_run, sampler_settings
from diffscale.runs.training import (
    CONFIG_NAME,
    METRICS_NAME,
    TrainingPlan,
    TrainingSummary,
    build_data_source,
    prepare_training,
    train,
)

__all__ = [
    "CONFIG_NAME",
    "METRICS_NAME",
    "ClimateRun",
    "DownscalingJob",
    "EMACandidate",
    "EvaluationInputs",
    "InitialConfig",
    "LikelihoodReport",
    "LikelihoodSettings",
    "MetricsLog",
    "PosthocEMAResult",
    "Recalibration",
    "Run",
    "TrainingPlan",
    "TrainingSummary",
    "bias_adjust",
    "build_data_source",
    "build_denoiser",
    "build_model_for",
    "check_ensemble_output",
    "compute_climatology",
    "default_run_dir",
    "evaluate",
    "fit_recalibration",
    "initial_config",
    "likelihood",
    "load_climate_run",
    "load_climatology",
    "load_inputs",
    "load_recalibration",
    "load_run",
    "loss_by_sigma_decade",
    "plots",
    "posthoc_ema",
    "prepare_training",
    "reconstruct_ema",
    "resolve_run_dir",
    "sample_run",
    "sampler_settings",
    "train",
    "write_report",
]
