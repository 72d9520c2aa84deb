"""``diffscale example-data`` and the downscaling template: the example file is the one the xarray tutorial serves
(fetched by a stand-in for the network here, from the local copy in ../shared/data, so the test runs offline), its
values are the original's, a wrong checksum or no network is one line and writes nothing, and the template that
trains on it validates with every key of the climate recipe explained."""

from __future__ import annotations

import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffscale.config import load_config
from diffscale.config.reference import reference_rows
from diffscale.data.examples import EXAMPLES, fetch_example
from diffscale.validation import ConfigError
from tests.conftest import run_cli, snapshot

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
GRIB = DATA / "era5_t2m_uk_2019-03.grib"
TEMPLATE = REPO / "configs" / "downscaling_template.yaml"
needs_data = pytest.mark.skipif(not GRIB.exists(), reason="shared ERA5 data not available")


def _serve(content: bytes):
    """An opener that answers the example's address with ``content`` (what the network would send)."""

    def opener(url: str) -> io.BytesIO:
        assert url == EXAMPLES["era5_uk"].url
        return io.BytesIO(content)

    return opener


@needs_data
def test_the_example_is_the_original_file_as_netcdf(tmp_path: Path) -> None:
    path = fetch_example("era5_uk", tmp_path / "example_data", opener=_serve(GRIB.read_bytes()))
    assert path == tmp_path / "example_data" / "era5_t2m_uk_2019-03.nc"
    with xr.open_dataset(path) as fetched, xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc") as local:
        assert set(fetched.data_vars) == {"t2m"} and set(fetched.coords) == {"time", "latitude", "longitude"}
        np.testing.assert_array_equal(fetched["t2m"].values, local["t2m"].values)
        np.testing.assert_array_equal(fetched["time"].values, local["time"].values)
        assert fetched["t2m"].attrs["units"] == "K"
    # a second call keeps the file (nothing is fetched: the opener would fail)
    assert fetch_example("era5_uk", tmp_path / "example_data", opener=_serve(b"")) == path


@needs_data
def test_the_command_converts_a_local_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    assert run_cli(["example-data", "--out", str(out), "--source", str(GRIB), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "era5_t2m_uk_2019-03.nc").is_file()


@needs_data
def test_a_changed_download_writes_nothing(tmp_path: Path) -> None:
    truncated = GRIB.read_bytes()[:-100]
    with pytest.raises(ConfigError, match=r"sha256 is .* expected e5e82609"):
        fetch_example("era5_uk", tmp_path / "out", opener=_serve(truncated))
    assert snapshot(tmp_path) == []


def test_no_network_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def offline(url: str) -> io.BytesIO:
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(ConfigError, match=r"cannot download .*Name or service not known.*pass it with source"):
        fetch_example("era5_uk", tmp_path / "out", opener=offline)
    assert snapshot(tmp_path) == []
    assert run_cli(["example-data", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        fetch_example("era5_uk", tmp_path / "file" / "out", opener=offline)


def test_the_template_validates_and_explains_every_key() -> None:
    config = load_config(TEMPLATE)
    assert config.data.kind == "climate" and config.data.paths == ["example_data/era5_t2m_uk_2019-03.nc"]
    assert config.data.crop is None  # your grid as a whole: nothing cut unless you ask (and then it is logged)
    text = TEMPLATE.read_text()
    for section, key, *_ in reference_rows():
        if section.startswith("data (kind: climate)") or section in ("training", "sampling", "output"):
            line = next((line for line in text.splitlines() if line.strip().startswith(f"{key}:")), None)
            assert line is not None, f"{section}.{key} is missing from the template"
            assert "#" in line or key in ("kind", "diffusion"), f"{section}.{key} has no explanation"
