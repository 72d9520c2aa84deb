"""Scores of generated images against reference images, one row per guidance weight, and the sweep's figure.

For each guidance weight w the generated images (uint8) and their requested classes are scored against the
reference images of the same classes (e.g. the Fashion-MNIST test images) in the feature space of a classifier
(:mod:`diffscale.evaluation.image_classifier`; :mod:`diffscale.evaluation.inception` adds Inception-v3 features):

- FD, the Fréchet distance between Gaussian fits of the generated and all reference features;
- KID, the unbiased cubic-kernel MMD^2 averaged over subsets, with its standard error;
- precision and recall of Kynkäänniemi et al. with k-NN radii, against a random subset of the reference of the
  generated set's size (both manifolds are then estimated from as many points, as the method assumes);
- class accuracy: the fraction of images that the classifier labels with the class they were drawn for, overall
  and per class.

Every metric is in :mod:`diffscale.evaluation.image_metrics`; this module only organises them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffscale.evaluation.image_classifier import (
    SmallImageClassifier,
    as_uint8_images,
    classifier_features,
    load_fashion_mnist_classifier,
)
from diffscale.evaluation.image_metrics import (
    KernelDistance,
    class_accuracy,
    frechet_distance,
    kernel_distance,
    precision_recall,
)
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FeatureFunction",
    "ImageReference",
    "ImageScores",
    "guidance_sweep_figure",
    "image_reference",
    "save_figure",
    "score_images",
    "scores_table",
]

FeatureFunction = Callable[[torch.Tensor], torch.Tensor]
"""uint8 images (N, C, H, W) -> features (N, d): an extra feature space (e.g. Inception's) for FD and KID."""


@dataclass(frozen=True)
class ImageReference:
    """The reference images' features: ``features`` (n, 128) of the classifier, ``labels`` (n,), and ``extra``
    features (n, d') of an optional second extractor (Inception), or None."""

    features: torch.Tensor
    labels: torch.Tensor
    extra: torch.Tensor | None = None
    extra_name: str | None = None

    def of_classes(self, classes: Sequence[int]) -> ImageReference:
        """The rows whose label is one of ``classes`` (ConfigError when a class has none)."""
        keep = torch.isin(self.labels, torch.as_tensor(list(classes), dtype=self.labels.dtype))
        missing = sorted(set(int(c) for c in classes) - set(self.labels[keep].tolist()))
        if missing:
            raise ConfigError(f"the reference images hold no image of class {missing[0]}")
        extra = None if self.extra is None else self.extra[keep]
        return ImageReference(self.features[keep], self.labels[keep], extra, self.extra_name)


def image_reference(
    images: Any,
    labels: Any,
    *,
    classifier: SmallImageClassifier | None = None,
    extra: FeatureFunction | None = None,
    extra_name: str | None = None,
) -> ImageReference:
    """Features of the reference ``images`` (uint8 (N, H, W) or (N, 1, H, W)) with their class ``labels``."""
    pixels = as_uint8_images(images, "reference images")
    labels = torch.as_tensor(np.asarray(labels)).reshape(-1).long()
    if labels.shape[0] != pixels.shape[0]:
        raise ConfigError(f"reference images: {pixels.shape[0]} images but {labels.shape[0]} labels")
    features, _ = classifier_features(classifier or load_fashion_mnist_classifier(), pixels, name="reference images")
    extra_features = None if extra is None else extra(pixels).to(torch.float64)
    return ImageReference(features, labels, extra_features, extra_name if extra is not None else None)


@dataclass(frozen=True)
class ImageScores:
    """The scores of one set of generated images (one guidance weight ``guidance``; None when unknown)."""

    guidance: float | None
    count: int
    frechet_distance: float
    kid: KernelDistance
    precision: float
    recall: float
    k: int
    accuracy: float
    class_accuracy: dict[int, float]
    extra_frechet_distance: float | None = None
    extra_kid: KernelDistance | None = None
    extra_name: str | None = None
    reference_count: int = 0


def score_images(
    images: Any,
    labels: Any,
    reference: ImageReference,
    *,
    guidance: float | None = None,
    classifier: SmallImageClassifier | None = None,
    extra: FeatureFunction | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> ImageScores:
    """Score generated uint8 ``images`` drawn for class ``labels`` (N,) against ``reference`` restricted to the
    classes requested (see the module's description). ``seed`` draws the KID subsets and the reference subset
    of precision/recall. ``extra`` must be the function that made ``reference.extra``."""
    pixels = as_uint8_images(images, "generated images")
    labels = torch.as_tensor(np.asarray(labels)).reshape(-1).long()
    if labels.shape[0] != pixels.shape[0]:
        raise ConfigError(f"generated images: {pixels.shape[0]} images but {labels.shape[0]} labels")
    if pixels.shape[0] <= k:
        raise ConfigError(f"generated images: {pixels.shape[0]} images; precision/recall with k = {k} need more than k")
    classes = sorted(set(labels.tolist()))
    ref = reference.of_classes(classes)
    features, logits = classifier_features(
        classifier or load_fashion_mnist_classifier(), pixels, name="generated images"
    )
    generator = torch.Generator().manual_seed(seed)
    kid = kernel_distance(features, ref.features, subsets=kid_subsets, subset_size=kid_subset_size, generator=generator)
    subset = torch.randperm(ref.features.shape[0], generator=generator)[: pixels.shape[0]]
    manifold = precision_recall(ref.features[subset], features, k=k)
    overall, per_class = class_accuracy(logits.argmax(1), labels)
    extra_fd = extra_kid = None
    if extra is not None:
        if ref.extra is None:
            raise ConfigError("extra features requested but the reference was built without them")
        extra_features = extra(pixels).to(torch.float64)
        extra_fd = frechet_distance(extra_features, ref.extra)
        extra_kid = kernel_distance(
            extra_features, ref.extra, subsets=kid_subsets, subset_size=kid_subset_size, generator=generator
        )
    return ImageScores(
        guidance=guidance,
        count=pixels.shape[0],
        frechet_distance=frechet_distance(features, ref.features),
        kid=kid,
        precision=manifold.precision,
        recall=manifold.recall,
        k=k,
        accuracy=overall,
        class_accuracy=per_class,
        extra_frechet_distance=extra_fd,
        extra_kid=extra_kid,
        extra_name=reference.extra_name if extra is not None else None,
        reference_count=int(ref.features.shape[0]),
    )


def _guidance_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def scores_table(scores: Sequence[ImageScores], class_names: Sequence[str] | None = None) -> list[str]:
    """Printable lines: one row per guidance weight (FD, KID +- s.e., precision, recall, accuracy), then the
    accuracy per class and weight."""
    extra = next((s.extra_name for s in scores if s.extra_name), None)
    header = (
        f"{'guidance':>8}  {'images':>6}  {'FD':>8}  {'KID (x1e3)':>16}  {'precision':>9}  {'recall':>6}  "
        f"{'accuracy':>8}"
    )
    if extra:
        header += f"  {'FD ' + extra:>14}  {'KID ' + extra + ' (x1e3)':>22}"
    lines = [header]
    for s in scores:
        kid = f"{1e3 * s.kid.mean:.3f} ± {1e3 * s.kid.standard_error:.3f}"
        row = (
            f"{_guidance_text(s.guidance):>8}  {s.count:>6}  {s.frechet_distance:>8.3f}  {kid:>16}  "
            f"{s.precision:>9.3f}  {s.recall:>6.3f}  {s.accuracy:>8.3f}"
        )
        if extra and s.extra_kid is not None and s.extra_frechet_distance is not None:
            extra_kid = f"{1e3 * s.extra_kid.mean:.3f} ± {1e3 * s.extra_kid.standard_error:.3f}"
            row += f"  {s.extra_frechet_distance:>14.3f}  {extra_kid:>22}"
        lines.append(row)
    classes = sorted({c for s in scores for c in s.class_accuracy})
    lines.append("class accuracy by guidance weight:")
    lines.append(f"{'class':>14}  " + "  ".join(f"{'w=' + _guidance_text(s.guidance):>7}" for s in scores))
    for c in classes:
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        values = "  ".join(f"{s.class_accuracy[c]:>7.3f}" if c in s.class_accuracy else f"{'-':>7}" for s in scores)
        lines.append(f"{name:>14}  {values}")
    return lines


def guidance_sweep_figure(scores: Sequence[ImageScores], title: str | None = None) -> Figure:
    """Metric against guidance weight w: FD, KID (with +-1 standard error bars), precision and recall, and
    class accuracy (matplotlib, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [s for s in scores if s.guidance is not None]
    if not rows:
        raise ConfigError("a guidance sweep figure needs scores with their guidance weights")
    rows.sort(key=lambda s: s.guidance)  # type: ignore[arg-type, return-value]
    weights = [s.guidance for s in rows]
    figure = Figure(figsize=(11.0, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4)
    axes[0].plot(weights, [s.frechet_distance for s in rows], "o-")
    axes[0].set_title("Fréchet distance (classifier features)", fontsize=9)
    axes[1].errorbar(
        weights,
        [1e3 * s.kid.mean for s in rows],
        yerr=[0.0 if math.isnan(s.kid.standard_error) else 1e3 * s.kid.standard_error for s in rows],
        fmt="o-",
        capsize=3,
    )
    axes[1].set_title("KID × 1000 (± 1 s.e.)", fontsize=9)
    axes[2].plot(weights, [s.precision for s in rows], "o-", label="precision")
    axes[2].plot(weights, [s.recall for s in rows], "s--", label="recall")
    axes[2].set_ylim(0, 1.02)
    axes[2].legend(fontsize=8)
    axes[2].set_title(f"precision / recall (k = {rows[0].k})", fontsize=9)
    axes[3].plot(weights, [s.accuracy for s in rows], "o-")
    axes[3].set_ylim(0, 1.02)
    axes[3].set_title("class accuracy", fontsize=9)
    for ax in axes:
        ax.set_xlabel("guidance weight w")
        ax.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` atomically in the format of ``path``'s extension."""
    from diffscale.evaluation.sample_plots import check_plot_path, figure_bytes
    from diffscale.files import atomic_write_bytes

    path = check_plot_path(path)
    atomic_write_bytes(path, figure_bytes(figure, path))
    return path
