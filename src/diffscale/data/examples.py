"""Example data for users who are online: files the examples and tutorials train on, fetched once, checked against
their sha256 and converted to netCDF.

``era5_uk``: ERA5 hourly 2 m temperature over the UK, 1-31 March 2019 (33 x 49 points at 0.25 deg, 744 fields;
ECMWF ERA5, Copernicus Climate Change Service), the GRIB file that ``xarray.tutorial.open_dataset(
"era5-2mt-2019-03-uk.grib")`` serves, from the same address and with the same checksum (without needing pooch).
It is written as ``era5_t2m_uk_2019-03.nc`` (the values unchanged; cfgrib's auxiliary coordinates dropped).

>>> path = fetch_example("era5_uk", "example_data")       # example_data/era5_t2m_uk_2019-03.nc
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.request import urlopen

from tqdm.auto import tqdm

from diffscale.files import atomic_write_bytes, check_output
from diffscale.validation import ConfigError, option_name

__all__ = ["EXAMPLES", "ExampleData", "fetch_example"]

CHUNK = 1 << 20
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class ExampleData:
    """One example: where it comes from, its checksum, and the netCDF file it becomes."""

    name: str
    description: str
    url: str
    sha256: str
    size: int
    filename: str
    variables: tuple[str, ...]


EXAMPLES: dict[str, ExampleData] = {
    "era5_uk": ExampleData(
        name="era5_uk",
        description="ERA5 hourly 2 m temperature over the UK, March 2019, 0.25 deg (the xarray tutorial's file)",
        url="https://github.com/pydata/xarray-data/raw/master/era5-2mt-2019-03-uk.grib",
        sha256="e5e82609f0e28e84822852e15d20c88dbb4b142a30264a7e6f87b9b5c7501df9",
        size=2_499_840,
        filename="era5_t2m_uk_2019-03.nc",
        variables=("t2m",),
    )
}

Opener = Callable[[str], IO[bytes]]


def _open_url(url: str) -> IO[bytes]:
    return urlopen(url, timeout=TIMEOUT_SECONDS)


def _download(example: ExampleData, target: Path, opener: Opener, progress: bool) -> None:
    """Stream ``example.url`` into ``target``, checking its sha256; ConfigError (one line) when it cannot."""
    digest = hashlib.sha256()
    try:
        bar = tqdm(total=example.size, unit="B", unit_scale=True, desc=example.name, disable=not progress)
        with opener(example.url) as response, target.open("wb") as handle, bar:
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"cannot download {example.url} ({reason}); offline, fetch that file by other means and pass it with "
            f"{option_name('source')}"
        ) from None
    if digest.hexdigest() != example.sha256:
        raise ConfigError(
            f"{example.url}: the download's sha256 is {digest.hexdigest()}, expected {example.sha256} (a changed or "
            "truncated file; nothing was written)"
        )


def _check_source(example: ExampleData, source: Path) -> None:
    if not source.is_file():
        raise ConfigError(f"{option_name('source')} = '{source}': no such file")
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != example.sha256:
        raise ConfigError(
            f"{option_name('source')} = '{source}': sha256 {digest.hexdigest()} is not the {example.name} file's "
            f"({example.sha256})"
        )


def _convert(grib: Path, target: Path) -> None:
    """The GRIB file as netCDF: the variables with their attributes, time/latitude/longitude coordinates."""
    import xarray as xr

    with xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""}) as dataset:
        auxiliary = [name for name in dataset.coords if name not in dataset.dims]
        dataset.drop_vars(auxiliary).load().to_netcdf(target)


def fetch_example(
    name: str = "era5_uk",
    out: str | os.PathLike[str] = "example_data",
    *,
    source: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    opener: Opener = _open_url,
) -> Path:
    """Fetch the example ``name`` into the folder ``out`` (created if missing) and return the netCDF file's path.

    Args:
        name: one of :data:`EXAMPLES`.
        out: the folder that receives the file.
        source: a local copy of the original file to convert instead of downloading it (checked by sha256).
        overwrite: replace an existing file (else it is kept and returned).
        progress: show a download progress bar.
        opener: opens the address (tests serve a local copy).

    Raises:
        ConfigError: an unknown name, an unusable ``out``, a failed download, or a file whose checksum differs;
            nothing is written then.
    """
    if name not in EXAMPLES:
        raise ConfigError(f"{option_name('name')} = {name!r}: unknown example; allowed: {', '.join(EXAMPLES)}")
    example = EXAMPLES[name]
    folder = check_output(out, option_name("out"), directory=True)
    target = folder / example.filename
    if target.exists() and not overwrite:
        return target
    if source is not None:
        _check_source(example, Path(source))
    with tempfile.TemporaryDirectory(prefix="diffscale-example-") as scratch:
        grib = Path(scratch) / "original.grib"
        if source is not None:
            shutil.copyfile(source, grib)
        else:
            _download(example, grib, opener, progress)
        converted = Path(scratch) / example.filename
        _convert(grib, converted)
        folder.mkdir(parents=True, exist_ok=True)  # only now: a failure above leaves nothing behind
        atomic_write_bytes(target, converted.read_bytes())
    return target
