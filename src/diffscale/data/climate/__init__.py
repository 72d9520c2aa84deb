"""Climate fields for downscaling: reading and harmonising files (:mod:`.io`), many files as one lazily read time axis
(:mod:`.series`), dates of every CF calendar (:mod:`.calendars`), coarsening, upsampling and trimming to the factor
(:mod:`.grid`), static fields from other grids (:mod:`.regrid`), coarse inputs from other grids
(:mod:`.coarse_regrid`, conservative weights in :mod:`.conservative`), units (:mod:`.units`), per-variable
transforms (:mod:`.transforms`), conditioning channels (:mod:`.channels`), the conditioning builder shared by
training and downscaling (:mod:`.conditioning`), the splits on the model's grid (:mod:`.splits`), the statistics
(:mod:`.statistics`), training samples assembled window by window (:mod:`.assembly`), the training dataset
(:mod:`.dataset`), a CorrDiff base kept in a store (:mod:`.base_store`) and a long coarse input's conditioning block
by block (:mod:`.blocks`)."""

from diffscale.data.climate.channels import latlon_channels, time_channel_names, time_channels
from diffscale.data.climate.conditioning import Conditioning, ConditioningBuilder, regression_base
from diffscale.data.climate.dataset import ClimateDataset, ClimateFields
from diffscale.data.climate.grid import (
    GridTrim,
    area_weights,
    block_centres,
    check_factor,
    coarsen,
    fine_coordinates,
    is_global_longitude,
    select_grid,
    trim_to_factor,
    upsample,
)
from diffscale.data.climate.io import CANONICAL_NAMES, canonical_variable, harmonise, open_fields
from diffscale.data.climate.regrid import regrid_bilinear
from diffscale.data.climate.splits import target_shape
from diffscale.data.climate.statistics import fit_climate_stats
from diffscale.data.climate.transforms import TRANSFORMS, Transforms, fit_stats
from diffscale.data.climate.units import convert_units

__all__ = [
    "CANONICAL_NAMES",
    "TRANSFORMS",
    "ClimateDataset",
    "ClimateFields",
    "Conditioning",
    "ConditioningBuilder",
    "GridTrim",
    "Transforms",
    "area_weights",
    "block_centres",
    "canonical_variable",
    "check_factor",
    "coarsen",
    "convert_units",
    "fine_coordinates",
    "fit_climate_stats",
    "fit_stats",
    "harmonise",
    "is_global_longitude",
    "latlon_channels",
    "open_fields",
    "regression_base",
    "regrid_bilinear",
    "select_grid",
    "target_shape",
    "time_channel_names",
    "time_channels",
    "trim_to_factor",
    "upsample",
]
