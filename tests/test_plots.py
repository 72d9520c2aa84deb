"""Tests of diffscale.evaluation.plots: the forward/reverse figure is a PNG of sensible size."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from diffscale.evaluation.plots import DensityPanel, ProcessRow, plot_forward_reverse


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def gaussian_panel(sigma: float, rng: np.random.Generator, note: str = "") -> DensityPanel:
    scale = np.sqrt(1.0 + sigma**2)
    grid = np.linspace(-4 * scale, 4 * scale, 200)
    density = np.exp(-0.5 * (grid / scale) ** 2) / (scale * np.sqrt(2 * np.pi))
    return DensityPanel(sigma=sigma, t=sigma, grid=grid, density=density, samples=rng.normal(0, scale, 500), note=note)


def make_rows(rows: int, columns: int) -> list[ProcessRow]:
    rng = np.random.default_rng(0)
    sigmas = np.geomspace(0.1, 80.0, columns)
    return [
        ProcessRow(label=f"row {r}", panels=[gaussian_panel(float(s), rng, note="W1 0.01") for s in sigmas])
        for r in range(rows)
    ]


def test_figure_is_a_png_of_sensible_size(tmp_path: Path) -> None:
    path = plot_forward_reverse(
        make_rows(4, 6), tmp_path / "figure.png", title="a title", column_titles=[f"c{i}" for i in range(6)]
    )
    assert path == tmp_path / "figure.png"
    width, height = png_size(path)
    assert 800 <= width <= 3000 and 500 <= height <= 2500
    assert width > height  # more noise levels than formulations: a landscape figure
    assert path.stat().st_size > 20_000  # histograms and curves, not an empty canvas


def test_single_panel_and_empty_samples(tmp_path: Path) -> None:
    panel = gaussian_panel(1.0, np.random.default_rng(1))
    panel = DensityPanel(sigma=0.0, t=0.0, grid=panel.grid, density=panel.density, samples=np.zeros(0))
    width, height = png_size(plot_forward_reverse([ProcessRow("only", [panel])], tmp_path / "one.png"))
    assert width > 100 and height > 100


def test_pyplot_state_untouched(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_forward_reverse(make_rows(1, 2), tmp_path / "state.png")
    assert plt.get_fignums() == before


@pytest.mark.parametrize(
    ("rows", "titles", "message"),
    [
        ([], None, "at least one row"),
        ([ProcessRow("a", [])], None, "same, non-zero"),
        ("ragged", None, "same, non-zero"),
        ("ok", ["only one"], "column_titles"),
    ],
)
def test_bad_layout(tmp_path: Path, rows: object, titles: list[str] | None, message: str) -> None:
    if rows == "ragged":
        rows = [*make_rows(1, 2), *make_rows(1, 3)]
    elif rows == "ok":
        rows = make_rows(2, 3)
    with pytest.raises(ValueError, match=message):
        plot_forward_reverse(rows, tmp_path / "bad.png", column_titles=titles)
    assert not (tmp_path / "bad.png").exists()
