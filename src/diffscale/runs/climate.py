"""The training data of a climate run (``data: {kind: climate}``): the training split read with the run's
statistics, and for a CorrDiff run (``data.target: regression_residual``) the base b = R(c) of its regression run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset
from diffscale.runs.building import check_grid, check_same_data
from diffscale.runs.run import ClimateRun, load_climate_run
from diffscale.runs.stats import load_stats

__all__ = ["build_climate_data"]


def build_climate_data(
    config: Config, run_dir: Path | None = None, device: torch.device | str = "cpu"
) -> ClimateDataset:
    """The training split of a climate run, ready to draw batches from (``dataset.sample``).

    The statistics are, in order of preference: those saved in ``run_dir`` (a resumed run), those of the
    regression run (``regression_residual``: both models must see the same conditioning), or fitted on the
    training period. For ``regression_residual`` the base b = R(c) is precomputed with the regression run's EMA
    model. The grid is checked against the network here when the configuration could not know it.
    """
    section: ClimateData = config.data
    saved = load_stats(run_dir) if run_dir is not None else None
    stats = saved["transforms"] if saved is not None else None
    regression: ClimateRun | None = None
    if section.target == "regression_residual":
        regression = load_climate_run(section.regression_run, device=str(device), key="data.regression_run")
        check_same_data(regression.config, config)
        stats = stats or regression.stats
    dataset = ClimateDataset(section, "train", stats)
    check_grid(config, dataset.latitude.size, dataset.longitude.size)
    if regression is not None:
        dataset.set_base(regression.regression_predictor(), device=device)
    return dataset
