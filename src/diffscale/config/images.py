"""``data: {kind: images}``: a labelled image data set read from files (:mod:`diffscale.data.images`).

The shape of a sample is declared (``channels``, ``height``, ``width`` of the stored images, ``pad_to``), so a
configuration validates, and a trained run loads and samples, without the files; reading them checks that they
match. With ``num_classes`` > 0 the labels reach the network one-hot (``model.label_dim`` follows), and
``model.label_dropout`` > 0 trains the unconditional model beside it for classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from diffscale.data.images import ImageDataset, ImageTransform, load_image_dataset
from diffscale.validation import ConfigError, StrictModel

__all__ = ["ImageData"]


class ImageData(StrictModel):
    """``data: {kind: images}``: images from IDX files, PNG class folders or NumPy arrays, in [-1, 1]."""

    kind: Literal["images"] = Field("images", description="data kind: images (labelled pictures from files)")
    path: str = Field(
        ...,
        description="an IDX folder (train-images-idx3-ubyte[.gz], ...), a folder of PNG class subfolders, an IDX "
        "image file, an .npz (images, labels) or an .npy image array",
    )
    split: Literal["train", "test"] = Field("train", description="the split of a folder: train, or test (t10k)")
    labels: str | None = Field(None, description="an IDX or .npy file of labels for an image file given alone")
    channels: int = Field(1, ge=1, le=4, strict=True, description="channels C of the stored images (checked)")
    height: int = Field(28, ge=2, strict=True, description="height H of the stored images (checked)")
    width: int = Field(28, ge=2, strict=True, description="width W of the stored images (checked)")
    pad_to: int | None = Field(
        None, ge=2, strict=True, description="pad with black (-1) to pad_to x pad_to, e.g. 28 -> 32; null: no padding"
    )
    horizontal_flip: bool = Field(False, description="flip images left-right with probability 1/2 in training")
    num_classes: int = Field(
        10, ge=0, strict=True, description="classes K the network is conditioned on (one-hot); 0: unconditional"
    )
    class_names: list[str] | None = Field(
        None, description="names of the classes 0..K-1 (default: the PNG folder names, else 0, 1, ...)"
    )
    limit: int | None = Field(None, ge=1, strict=True, description="train on the first limit images only")

    @model_validator(mode="after")
    def _consistent(self) -> ImageData:
        if self.pad_to is not None and self.pad_to < max(self.height, self.width):
            raise ValueError(f"pad_to = {self.pad_to} is smaller than the {self.height} x {self.width} images")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for num_classes = {self.num_classes} "
                "(give one per class)"
            )
        return self

    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of a training sample, padding included."""
        if self.pad_to is None:
            return (self.channels, self.height, self.width)
        return (self.channels, self.pad_to, self.pad_to)

    def transform(self) -> ImageTransform:
        """The flips and padding of training."""
        return ImageTransform(horizontal_flip=self.horizontal_flip, pad_to=self.pad_to)

    def build(self, split: Literal["train", "test"] | None = None) -> ImageDataset:
        """Read the images (``split``, default ``data.split``) and check them against this section."""
        data = load_image_dataset(
            Path(self.path).expanduser(),
            split or self.split,
            labels=self.labels,
            class_names=self.class_names,
            transform=self.transform(),
            conditional=self.num_classes > 0,
            limit=self.limit,
        )
        declared = (self.channels, self.height, self.width)
        if data.image_shape != declared:
            raise ConfigError(
                f"data.path = '{self.path}': its images are {' x '.join(map(str, data.image_shape))} (C x H x W), the "
                f"configuration declares {' x '.join(map(str, declared))} (set data.channels, data.height, data.width)"
            )
        if self.num_classes:
            if data.labels is None:
                raise ConfigError(
                    f"data.path = '{self.path}': no labels (give data.labels, or data.num_classes: 0 to train "
                    "unconditionally)"
                )
            top = int(data.labels.max())
            if top >= self.num_classes:
                raise ConfigError(f"data.path = '{self.path}': label {top} but data.num_classes = {self.num_classes}")
            names = data.class_names
            if len(names) > self.num_classes:
                raise ConfigError(
                    f"data.path = '{self.path}': {len(names)} classes ({', '.join(names)}) but data.num_classes = "
                    f"{self.num_classes}"
                )
            if len(names) < self.num_classes:  # classes absent from these files are still classes of the model
                names = (*names, *(str(index) for index in range(len(names), self.num_classes)))
                data = ImageDataset(data.images, data.labels, names, data.source, data.transform, True)
        return data
