"""Labelled images from a class-conditional run (``data.kind: images``): per class and guidance weight, as uint8
images with their labels, a figure of grids and an ``.npz`` file.

For each guidance weight w (classifier-free guidance, :mod:`diffscale.guidance`) the same noise is used, so the
panels differ by w alone; sample j of class c has the same starting noise in every panel.

>>> run = diffscale.load_run("runs/fashion_mnist")
>>> drawn = run.sample_images(classes=range(10), per_class=8, guidance=(0, 1, 2, 4), steps=32, seed=0)
>>> drawn.save("samples.npz"); drawn.save_figure("grid.png")

The ``.npz`` file holds ``images`` (uint8, (N, H, W) for one channel, else (N, H, W, C); the stored size, the
training padding cropped off), ``labels`` (int64, (N,)), ``guidance`` (float64, (N,)), ``class_names`` and
``metadata`` (a JSON string: the run, checkpoint step, seed, sampler settings); it reads back as an image data set
(:func:`diffscale.data.images.load_image_dataset`).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffscale.config.images import ImageData
from diffscale.data.images import ImageTransform
from diffscale.files import check_output, write_together
from diffscale.runs.sampling import sample_run
from diffscale.sampling import number_of_evaluations
from diffscale.validation import ConfigError, option_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from diffscale.runs.run import Run

__all__ = [
    "ImageSamples",
    "check_image_run",
    "class_names_of",
    "image_grid_figure",
    "parse_classes",
    "parse_guidance",
    "sample_images",
]

GRID_FORMATS = (".png", ".pdf", ".svg")


def check_image_run(run: Run) -> ImageData:
    """The run's ``data:`` section; ConfigError unless the run models images."""
    section = run.config.data
    if not isinstance(section, ImageData):
        raise ConfigError(f"'{run.run_dir}' models {section.kind} data, not images (data.kind: images)")
    return section


def class_names_of(section: ImageData) -> tuple[str, ...]:
    """The names of the classes 0..K-1 (``data.class_names``, else "0", "1", ...)."""
    return tuple(section.class_names or (str(index) for index in range(section.num_classes)))


def parse_classes(spec: str | Iterable[int | str] | None, names: Sequence[str]) -> list[int]:
    """Class indices from ``spec``: None (all), integers or class names, or text such as ``0-9``, ``0,3,5-7`` or
    ``Sneaker,Bag`` (names as in ``names``, any case). ConfigError naming the option for an unknown class."""
    count = len(names)
    if spec is None:
        return list(range(count))
    items: list[int | str] = []
    if isinstance(spec, str):
        for part in (piece.strip() for piece in spec.split(",")):
            match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if match:
                first, last = int(match[1]), int(match[2])
                if first > last:
                    raise ConfigError(f"{option_name('classes')} = {spec!r}: range {part} runs backwards")
                items.extend(range(first, last + 1))
            elif part:
                items.append(int(part) if part.isdigit() else part)
    else:
        items = list(spec)
    lowered = {name.lower(): index for index, name in enumerate(names)}
    chosen = []
    for item in items:
        if isinstance(item, str):
            if item.lower() not in lowered:
                raise ConfigError(f"{option_name('classes')}: unknown class {item!r}; the classes: {', '.join(names)}")
            chosen.append(lowered[item.lower()])
            continue
        if isinstance(item, bool) or int(item) != item or not 0 <= int(item) < count:
            raise ConfigError(f"{option_name('classes')}: class {item!r} outside 0..{count - 1}")
        chosen.append(int(item))
    if not chosen:
        raise ConfigError(f"{option_name('classes')} = {spec!r}: names no class")
    return chosen


def parse_guidance(spec: str | float | Iterable[float]) -> list[float]:
    """Guidance weights from ``spec``: a number, numbers, or text ``0,1,2,4``; each finite and >= 0."""
    if isinstance(spec, str):
        try:
            values = [float(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"{option_name('guidance')} = {spec!r}: expected numbers separated by commas") from None
    elif isinstance(spec, int | float):
        values = [float(spec)]
    else:
        values = [float(value) for value in spec]
    if not values or any(not math.isfinite(value) or value < 0 for value in values):
        raise ConfigError(f"{option_name('guidance')} = {spec!r}: expected one or more finite numbers >= 0")
    return values


@dataclass
class ImageSamples:
    """Images drawn from a class-conditional run: ``images`` uint8 (N, C, H, W), ordered by guidance weight, then
    class, then sample; ``labels`` and ``guidance`` (N,) say what each is."""

    images: np.ndarray
    labels: np.ndarray
    guidance: np.ndarray
    class_names: tuple[str, ...]
    classes: list[int]
    weights: list[float]
    per_class: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def panel(self, weight_index: int) -> np.ndarray:
        """The images of one guidance weight as (classes, per_class, C, H, W)."""
        block = len(self.classes) * self.per_class
        images = self.images[weight_index * block : (weight_index + 1) * block]
        return images.reshape(len(self.classes), self.per_class, *self.images.shape[1:])

    def figure(self, title: str | None = None) -> Figure:
        """One panel per guidance weight: rows are the classes (named), columns the samples."""
        return image_grid_figure(self, title=title)

    def npz_bytes(self) -> bytes:
        """The ``.npz`` file's content (see the module's description)."""
        images = self.images[:, 0] if self.images.shape[1] == 1 else np.moveaxis(self.images, 1, -1)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            images=images,
            labels=self.labels.astype(np.int64),
            guidance=self.guidance.astype(np.float64),
            class_names=np.asarray(self.class_names, dtype=str),
            metadata=np.asarray(json.dumps(self.metadata)),
        )
        return buffer.getvalue()

    def files(self, npz: str | Path | None = None, figure: str | Path | None = None) -> dict[Path, bytes]:
        """The files of :meth:`save` as bytes, by path (checked before anything is drawn)."""
        from diffscale.evaluation.sample_plots import figure_bytes

        files = {}
        if npz is not None:
            files[check_npz_path(npz)] = self.npz_bytes()
        if figure is not None:
            path = check_grid_path(figure)
            files[path] = figure_bytes(self.figure(), path)
        return files

    def save(self, npz: str | Path | None = None, figure: str | Path | None = None) -> list[Path]:
        """Write the ``.npz`` file and/or the figure (.png, .pdf, .svg) together (atomically: all or none)."""
        return write_together(self.files(npz, figure))

    def save_figure(self, path: str | Path) -> list[Path]:
        """Write the figure alone."""
        return self.save(figure=path)


def check_npz_path(path: str | Path, option: str | None = None) -> Path:
    """``path`` if it names a writable ``.npz`` file."""
    return check_output(path, option or option_name("out"), suffixes=(".npz",), kind="image samples file")


def check_grid_path(path: str | Path, option: str | None = None) -> Path:
    """``path`` if it names a writable figure (.png, .pdf, .svg)."""
    return check_output(path, option or option_name("grid"), suffixes=GRID_FORMATS, kind="figure")


def _mosaic(panel: np.ndarray, gap: int = 1) -> np.ndarray:
    """(rows, columns, C, H, W) uint8 -> one (rows (H + gap) - gap, columns (W + gap) - gap, C) image, white gaps."""
    rows, columns, channels, height, width = panel.shape
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), 255, dtype=np.uint8)
    for row in range(rows):
        for column in range(columns):
            top, left = row * (height + gap), column * (width + gap)
            canvas[top : top + height, left : left + width] = np.moveaxis(panel[row, column], 0, -1)
    return canvas


def image_grid_figure(samples: ImageSamples, title: str | None = None) -> Figure:
    """The figure of :meth:`ImageSamples.figure`: a grey-scale (or colour) mosaic per guidance weight."""
    from matplotlib.figure import Figure

    height, width = samples.images.shape[-2:]
    rows, columns = len(samples.classes), samples.per_class
    scale = 0.22 * max(1.0, 28 / max(height, width)) * max(height, width) / 28
    panel_width, panel_height = max(columns * scale, 0.8) + 0.3, rows * scale + 0.5
    figure = Figure(figsize=(len(samples.weights) * panel_width + 1.2, panel_height + 0.4))
    axes = figure.subplots(1, len(samples.weights), squeeze=False)[0]
    centres = [(row + 0.5) * (height + 1) - 1 for row in range(rows)]
    for index, (axis, weight) in enumerate(zip(axes, samples.weights, strict=True)):
        mosaic = _mosaic(samples.panel(index))
        if mosaic.shape[-1] == 1:
            axis.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            axis.imshow(mosaic, interpolation="nearest")
        axis.set_title(f"w = {weight:g}", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks(centres if index == 0 else [])
        if index == 0:
            axis.set_yticklabels([samples.class_names[label] for label in samples.classes], fontsize=8)
        axis.tick_params(length=0)
        for spine in axis.spines.values():
            spine.set_visible(False)
    figure.suptitle(title or "classifier-free guidance weight w", fontsize=10)
    figure.tight_layout()
    return figure


def sample_images(
    run: Run,
    classes: str | Iterable[int | str] | None = None,
    per_class: int = 8,
    guidance: str | float | Iterable[float] = (1.0,),
    *,
    settings: Any = None,
    seed: int = 0,
    batch_size: int = 10_000,
    progress: bool = False,
    threads: Any = "auto",
    **overrides: Any,
) -> ImageSamples:
    """``per_class`` images of each of ``classes`` (default all; indices, names, or text ``0-9``) for every guidance
    weight in ``guidance`` (a number, numbers or text ``0,1,2,4``), with the run's sampler settings or
    ``settings`` and ``overrides`` (``steps``, ``sampler``, ...). The files are not needed: the class names and the
    image size come from the run's configuration. Raises ConfigError (one line) for a run that does not model
    images, unknown classes, or guidance on a run trained without label dropout."""
    section = check_image_run(run)
    names = class_names_of(section)
    if section.num_classes == 0:
        raise ConfigError(f"'{run.run_dir}' is unconditional (data.num_classes = 0): draw samples with run.sample(num)")
    if isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1:
        raise ConfigError(f"{option_name('per_class')} = {per_class!r}: must be an integer >= 1")
    chosen = parse_classes(classes, names)
    weights = parse_guidance(guidance)
    sampler = run.sampler_settings(settings, **overrides)
    labels = torch.tensor(chosen, dtype=torch.long).repeat_interleave(int(per_class))
    transform: ImageTransform = section.transform()
    images, label_rows, weight_rows = [], [], []
    for weight in weights:
        x = sample_run(
            run,
            labels.shape[0],
            sampler,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            threads=threads,
            labels=labels,
            guidance=weight,
        )
        x = transform.crop(x, section.height, section.width)
        images.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
        label_rows.append(labels.numpy())
        weight_rows.append(np.full(labels.shape[0], weight))
    metadata = {
        "run_dir": str(Path(run.run_dir).resolve()),
        "checkpoint_step": run.step,
        "weights": run.weights,
        "seed": seed,
        "nfe_per_sample": number_of_evaluations(sampler.steps, sampler.solver),
        "sampler": sampler.model_dump(mode="json"),
    }
    return ImageSamples(
        images=np.concatenate(images),
        labels=np.concatenate(label_rows),
        guidance=np.concatenate(weight_rows),
        class_names=names,
        classes=chosen,
        weights=weights,
        per_class=int(per_class),
        metadata=metadata,
    )
