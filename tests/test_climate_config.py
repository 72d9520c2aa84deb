"""diffscale.config.climate: the ``data: {kind: climate}`` section (validated without reading any file)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import yaml

from diffscale.config.climate import ClimateChannels, ClimateData, CropWindow
from diffscale.validation import ConfigError, validate


def climate(**values: object) -> ClimateData:
    return validate(ClimateData, {"paths": ["/nowhere/fine.nc"], **values}, prefix="data")


def test_defaults_work_and_no_file_is_read() -> None:
    section = climate()
    assert section.kind == "climate" and section.variables == ["t2m"] and section.coarsen_factor == 4
    assert section.target == "residual" and section.patch is None and section.periodic_longitude is None
    assert section.cond_channel_names() == ["t2m_coarse"] and section.cond_channels == 1
    assert section.sample_shape() is None
    assert section.period("train") is None


def test_grid_keys_default_to_trim_bilinear_statics_and_an_unweighted_loss() -> None:
    section = climate()
    assert section.remainder == "trim" and section.static_interpolation == "bilinear"
    assert section.latitude_weighted_loss is False
    # a crop of both axes gives the shape without reading files: less the surplus that trimming drops
    assert climate(crop={"lat": [0, 33], "lon": [2, 51]}).sample_shape() == (1, 32, 48)
    assert climate(crop={"lat": [0, 33], "lon": [2, 51]}, coarsen_factor=3).sample_shape() == (1, 33, 48)
    assert climate(crop={"lat": [0, 33], "lon": [2, 51]}, remainder="error").sample_shape() == (1, 33, 49)


def test_every_key_has_a_description() -> None:
    for model in (ClimateData, ClimateChannels, CropWindow):
        for name, field in model.model_fields.items():
            assert field.description, name


def test_aliases_become_canonical_names_and_a_single_path_a_list() -> None:
    section = climate(
        paths="/nowhere/a.nc",
        variables=["2m_temperature", "total_precipitation"],
        transforms={"total_precipitation": "log1p"},
    )
    assert section.paths == ["/nowhere/a.nc"]
    assert section.variables == ["t2m", "tp"] and section.transforms == {"tp": "log1p"}
    with pytest.raises(ConfigError, match="t2m listed more than once"):
        climate(variables=["t2m", "2t"])


def test_channels_and_shapes_follow_the_section() -> None:
    section = climate(
        variables=["t2m", "u10"],
        static_paths=["/nowhere/static.nc"],
        static_variables=["z", "lsm"],
        channels={"latlon": True, "day_of_year": True},
        crop={"lat": [0, 32], "lon": [8, 56]},
    )
    assert section.static_variables == ["orography", "lsm"]
    assert section.cond_channel_names() == [
        "t2m_coarse",
        "u10_coarse",
        "orography",
        "lsm",
        "latitude",
        "sin_longitude",
        "cos_longitude",
        "sin_day_of_year",
        "cos_day_of_year",
    ]
    assert section.sample_shape() == (2, 32, 48)
    assert climate(patch=[16, 24]).sample_shape() == (1, 16, 24)


def test_periods_are_inclusive_and_yaml_dates_are_accepted() -> None:
    raw = yaml.safe_load(
        "train_period: [2019-03-01, 2019-03-24]\nvalidation_period: ['2019-03-25T00', '2019-03-31T12:00']"
    )
    assert isinstance(raw["train_period"][0], dt.date)
    section = climate(**raw)
    assert section.train_period == [("2019-03-01", "2019-03-24")]  # one period: a list of one
    start, end = section.period("train")
    assert start == np.datetime64("2019-03-01T00:00") and end == np.datetime64("2019-03-24T23:59:59.999999999")
    assert section.period("validation")[1] == np.datetime64("2019-03-31T12:00")
    with pytest.raises(ValueError, match="test_period is not set"):
        section.period("test")


def test_several_periods_are_their_span_less_the_gaps() -> None:
    # every fourth week held out for testing, one week for validation, the rest for training
    weeks = [["1970-01-22", "1970-01-28"], ["1970-02-19", "1970-02-25"], ["1970-03-19", "1970-03-25"]]
    section = climate(train_period=None, validation_period=["1970-01-08", "1970-01-14"], test_period=weeks)
    assert section.test_period == [tuple(week) for week in weeks]
    ns = np.timedelta64(1, "ns")
    assert section.period("test") == (np.datetime64("1970-01-22"), np.datetime64("1970-03-26") - ns)
    assert section.excluded_periods("test") == [
        (np.datetime64("1970-01-29"), np.datetime64("1970-02-19") - ns),
        (np.datetime64("1970-02-26"), np.datetime64("1970-03-19") - ns),
    ]
    assert section.period("train") is None
    assert section.excluded_periods("train") == [
        (np.datetime64("1970-01-08"), np.datetime64("1970-01-15") - ns),
        *[(np.datetime64(start), np.datetime64(end) + np.timedelta64(1, "D") - ns) for start, end in weeks],
    ]
    assert section.excluded_periods("validation") == []  # one period: no gaps
    adjacent = climate(test_period=[["1970-01-01", "1970-01-07"], ["1970-01-08", "1970-01-14"]])
    assert adjacent.excluded_periods("test") == []  # back to back: no gap between them
    with pytest.raises(ConfigError, match=r"\['1970-02-20', '1970-02-21'\] overlaps test_period \['1970-02-19', "):
        climate(test_period=weeks, validation_period=["1970-02-20", "1970-02-21"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train_period": ["2019-03-10", "2019-03-01"]}, "the end '2019-03-01' is before the start"),
        ({"train_period": ["2019-03-01", "2019-03-10"], "test_period": ["2019-03-10", "2019-03-12"]}, "overlaps"),
        ({"train_period": ["March", "2019-03-10"]}, "not an ISO date"),
        ({"transforms": {"tp": "log1p"}}, "transforms: tp not among variables"),
        ({"transforms": {"t2m": "log"}}, "data.transforms.t2m = 'log'"),
        ({"static_variables": ["lsm"]}, "static_variables needs static_paths"),
        ({"crop": {"lat": [10, 5]}}, "stop must be greater than start"),
        ({"crop": {"lat": [0, 8]}, "patch": [16, 8]}, "larger than the crop's lat window"),
        ({"coarsen_factor": 0}, "data.coarsen_factor = 0"),
        ({"remainder": "pad"}, "data.remainder = 'pad'"),
        ({"static_interpolation": "nearest"}, "data.static_interpolation = 'nearest'"),
        ({"target": "delta"}, "data.target = 'delta'"),
        ({"patch": [0, 8]}, "data.patch.0 = 0"),
        ({"color": "red"}, "unknown key 'color'"),
        ({"paths": []}, "data.paths"),
    ],
)
def test_bad_sections_give_one_line_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        climate(**values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_period_end_covers_the_whole_calendar_unit_it_names() -> None:
    from diffscale.config.climate import period_bounds

    assert period_bounds(("2019", "2019"))[1] == np.datetime64("2019-12-31T23:59:59.999999999")
    assert period_bounds(("2019-02", "2019-02"))[1] == np.datetime64("2019-02-28T23:59:59.999999999")
    assert period_bounds(("2019-03-01", "2019-03-19"))[1] == np.datetime64("2019-03-19T23:59:59.999999999")
    assert period_bounds(("2019-03-01T06:00", "2019-03-01T06:00"))[1] == np.datetime64("2019-03-01T06:00")


def test_overrides_reach_nested_keys_of_the_climate_section() -> None:
    from diffscale.config.loader import apply_overrides

    raw = {"data": {"kind": "climate", "paths": ["/nowhere/fine.nc"], "channels": {"latlon": True, "hour": True}}}
    data = apply_overrides(raw, ["data.channels.latlon=false", "data.crop.lat=[0, 8]"])["data"]
    assert data["channels"] == {"latlon": False, "hour": True}  # the sibling key is kept
    assert data["crop"] == {"lat": [0, 8]}  # an absent sub-section is created
    assert raw["data"]["channels"]["latlon"] is True  # the input is not modified
    section = climate(channels=data["channels"], crop=data["crop"])
    assert section.channels.latlon is False and section.channels.hour is True and section.crop.lat == (0, 8)
    for override, message in (
        ("data.channels.lat_lon=true", "unknown key 'lat_lon' in data.channels; allowed keys: latlon"),
        ("data.channels.latlon.x=1", "data.channels.latlon has no sub-keys"),
        ("data.paths.x=1", "data.paths has no sub-keys"),
    ):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            apply_overrides(raw, [override])
    with pytest.raises(ConfigError, match=r"data\.channels = 3 is not a mapping"):
        apply_overrides({"data": {"kind": "climate", "channels": 3}}, ["data.channels.latlon=false"])
