"""Labelled image data sets: IDX files (gzipped or not), folders of PNG files (one subfolder per class) and NumPy
``.npy``/``.npz`` arrays, read into uint8 images (N, C, H, W) with integer class labels.

Training sees every image as x = u / 127.5 - 1 in [-1, 1] (u in 0..255), optionally flipped left-right (with
probability 1/2) and padded with -1 (black) to a square ``pad_to`` x ``pad_to`` (28 -> 32 gives a U-Net three
levels 32, 16, 8). Class labels reach the network one-hot, (B, K) for K classes.

IDX (the format of MNIST and Fashion-MNIST): a big-endian header of two zero bytes, a type code (0x08 unsigned
byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and the number of dimensions d, then d
big-endian uint32 sizes, then the values in C order. Images are idx3 (N, H, W), labels idx1 (N,).

>>> images = read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")   # (60000, 28, 28) uint8
>>> data = load_image_dataset("/usr/share/datasets/fashion-mnist", split="train")
>>> data.images.shape, data.labels[:5], data.num_classes                              # (60000, 1, 28, 28), ..., 10
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from diffscale.data.batch import Batch
from diffscale.validation import ConfigError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FOLDERS",
    "FASHION_MNIST_HOWTO",
    "IDX_TYPES",
    "ImageDataset",
    "ImageTransform",
    "Split",
    "SplitSummary",
    "find_fashion_mnist",
    "find_idx_pair",
    "load_image_dataset",
    "read_idx",
    "summarise_image_folder",
    "to_uint8",
    "write_idx",
]

Split = Literal["train", "test"]
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""The ten Fashion-MNIST classes, in label order 0..9."""

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type codes and the (big-endian) NumPy types of their values."""
IDX_PREFIXES: dict[str, tuple[str, ...]] = {"train": ("train",), "test": ("t10k", "test")}
"""File name prefixes of a split in an IDX folder (MNIST and Fashion-MNIST call the test split t10k)."""
GZIP_MAGIC = b"\x1f\x8b"
PNG_SUFFIXES = (".png",)


# -- IDX ------------------------------------------------------------------------------------------------------
def _open_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with gzip's magic bytes (whatever its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"'{path}': no such file") from None
    except OSError as error:
        raise ConfigError(f"'{path}': cannot be read ({error.strerror})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ConfigError(f"'{path}': a damaged gzip file ({error})") from None
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order.

    Raises:
        ConfigError: one line naming the file, for a wrong magic number (not an IDX file), an unknown type code, or
            a size that does not match the header (a truncated file, or trailing bytes).
    """
    path = Path(path)
    raw = _open_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        magic = raw[:4].hex() if raw else "(empty file)"
        raise ConfigError(
            f"'{path}': not an IDX file (magic number {magic}; an IDX file starts with 0x0000, a type code and the "
            "number of dimensions)"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        allowed = ", ".join(f"0x{key:02X}" for key in IDX_TYPES)
        raise ConfigError(f"'{path}': unknown IDX type code 0x{code:02X} (allowed: {allowed})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"'{path}': truncated IDX header ({len(raw)} bytes; {ndim} dimensions need {header})")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(
            f"'{path}': the IDX header declares shape {shape} of {dtype.name} ({expected} bytes with the header), but "
            f"the file holds {len(raw)} bytes ({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress``, default: when the name ends in ``.gz``),
    atomically. The inverse of :func:`read_idx`; its type must be one of :data:`IDX_TYPES`."""
    from diffscale.files import atomic_write_bytes

    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ConfigError(f"'{path}': an IDX file cannot hold {array.dtype} values (allowed: {list(codes)})")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
    return path


def find_idx_pair(folder: str | os.PathLike[str], split: Split = "train") -> tuple[Path, Path]:
    """The (images, labels) IDX files of ``split`` in ``folder``: ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte`` (``t10k-`` or ``test-`` for the test split), each gzipped (``.gz``) or not.
    ConfigError naming the folder and the names looked for when one is missing."""
    folder = Path(folder)
    found = []
    for part, dims in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{part}-idx{dims}-ubyte{suffix}" for prefix in IDX_PREFIXES[split] for suffix in ("", ".gz")]
        hits = [folder / name for name in names if (folder / name).is_file()]
        if not hits:
            raise ConfigError(f"'{folder}': no {split} {part} IDX file (looked for {', '.join(names)})")
        found.append(hits[0])
    return found[0], found[1]


def is_idx_folder(folder: Path) -> bool:
    """Whether ``folder`` holds IDX files (``*-idx[0-9]-ubyte`` or ``.gz``)."""
    return any(re.search(r"-idx\d-ubyte(\.gz)?$", item.name) for item in folder.iterdir())


# -- arrays ---------------------------------------------------------------------------------------------------
def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Images (N, H, W), (N, C, H, W) or (N, H, W, C) (C in 1, 3, 4) as uint8 (N, C, H, W).

    Integer values must lie in 0..255; floating-point values in [0, 1] (scaled by 255 and rounded). ConfigError
    naming ``where`` for anything else (a non-image array)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[1] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
            array = np.moveaxis(array, -1, 1)  # channels last -> first
        if array.shape[1] not in (1, 3, 4):
            raise ConfigError(
                f"{where}: shape {array.shape} has no channel axis of 1, 3 or 4 (images are (N, H, W), "
                "(N, C, H, W) or (N, H, W, C))"
            )
    else:
        raise ConfigError(
            f"{where}: an array of shape {array.shape} is not a stack of images ((N, H, W), (N, C, H, W) or "
            "(N, H, W, C))"
        )
    if array.shape[0] == 0 or array.shape[2] < 2 or array.shape[3] < 2:
        raise ConfigError(f"{where}: shape {array.shape} holds no images")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ConfigError(f"{where}: integer pixel values {low}..{high} are outside 0..255")
        return np.ascontiguousarray(array, dtype=np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ConfigError(f"{where}: pixel values include NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ConfigError(
                f"{where}: floating-point pixel values {low:g}..{high:g} are outside [0, 1] (give uint8 0..255 or "
                "floats in [0, 1])"
            )
        return np.ascontiguousarray(np.rint(array * 255), dtype=np.uint8)
    raise ConfigError(f"{where}: dtype {array.dtype} is not an image type (uint8, integers 0..255 or floats in [0, 1])")


def _labels_array(array: np.ndarray, count: int, where: str) -> np.ndarray:
    """Class labels as int64 (N,): integers >= 0, one per image."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{where}: labels must be integers of shape (N,); got {array.dtype} of shape {array.shape}")
    if array.shape[0] != count:
        raise ConfigError(f"{where}: {array.shape[0]} labels for {count} images (the counts must match)")
    if count and int(array.min()) < 0:
        raise ConfigError(f"{where}: negative label {int(array.min())} (labels are class indices 0, 1, ...)")
    return array.astype(np.int64)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"'{path}': no such file") from None
    except (ValueError, OSError) as error:
        raise ConfigError(f"'{path}': not a readable .npy array without pickles ({error})") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """(images, labels or None, class names or None) of an ``.npz`` file with arrays ``images`` (and ``labels``,
    ``class_names``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise ConfigError(f"'{path}': no array 'images' (holds {', '.join(archive.files) or 'nothing'})")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
            names = tuple(str(name) for name in archive["class_names"]) if "class_names" in archive.files else None
    except FileNotFoundError:
        raise ConfigError(f"'{path}': no such file") from None
    except (ValueError, OSError) as error:
        raise ConfigError(f"'{path}': not a readable .npz archive without pickles ({error})") from None
    return images, labels, names


def _read_png(path: Path) -> np.ndarray:
    """One PNG as uint8 (H, W) or (H, W, C)."""
    from matplotlib import image as mpimg

    try:
        values = mpimg.imread(path, format="png")
    except (OSError, ValueError, SyntaxError) as error:
        raise ConfigError(f"'{path}': not a readable PNG image ({error})") from None
    return np.rint(values * 255).astype(np.uint8) if values.dtype != np.uint8 else values


def _read_png_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images of class subfolders (sorted names are the classes 0, 1, ...): uint8 (N, C, H, W), labels, names."""
    classes = sorted(item for item in folder.iterdir() if item.is_dir())
    if not classes:
        raise ConfigError(f"'{folder}': no class subfolders of PNG files (give one subfolder per class)")
    images, labels = [], []
    for label, subfolder in enumerate(classes):
        files = sorted(item for item in subfolder.iterdir() if item.suffix.lower() in PNG_SUFFIXES)
        if not files:
            raise ConfigError(f"'{subfolder}': a class folder without .png files")
        for file in files:
            picture = _read_png(file)
            if images and picture.shape != images[0].shape:
                raise ConfigError(f"'{file}': shape {picture.shape} differs from the first image's {images[0].shape}")
            images.append(picture)
            labels.append(label)
    stack = np.stack(images)
    if stack.ndim == 4 and stack.shape[-1] == 4:  # RGBA: an opaque alpha channel carries nothing
        if (stack[..., 3] != 255).any():
            raise ConfigError(f"'{folder}': PNG files with transparency (the alpha channel is not opaque)")
        stack = stack[..., :3]
    return to_uint8(stack, f"'{folder}'"), np.asarray(labels, dtype=np.int64), tuple(item.name for item in classes)


# -- the data set ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageTransform:
    """What training does to an image: x = u / 127.5 - 1, left-right flips with probability 1/2
    (``horizontal_flip``), padding with -1 to ``pad_to`` x ``pad_to`` (None: none)."""

    horizontal_flip: bool = False
    pad_to: int | None = None

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding of an H x W image (the odd pixel goes right/bottom)."""
        if self.pad_to is None:
            return (0, 0, 0, 0)
        if self.pad_to < max(height, width):
            raise ConfigError(f"data.pad_to = {self.pad_to} is smaller than the {height} x {width} images")
        across, down = self.pad_to - width, self.pad_to - height
        return (across // 2, across - across // 2, down // 2, down - down // 2)

    def __call__(self, images: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 in [-1, 1], flipped where ``flips`` (B,) is True, padded."""
        x = images.float() / 127.5 - 1
        if self.horizontal_flip and flips is not None:
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        left, right, top, bottom = self.padding(x.shape[-2], x.shape[-1])
        if left or right or top or bottom:
            x = torch.nn.functional.pad(x, (left, right, top, bottom), value=-1.0)
        return x

    def crop(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The H x W centre of padded images (the inverse of the padding)."""
        left, _, top, _ = self.padding(height, width)
        return x[..., top : top + height, left : left + width]


@dataclass
class ImageDataset:
    """Images (uint8, (N, C, H, W)) with class labels (int64, (N,), or None) and class names.

    ``sample(n, generator)`` draws a training batch: n images chosen uniformly with replacement, transformed
    (:class:`ImageTransform`), with their one-hot labels as ``class_labels`` when ``num_classes`` > 0.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...]
    source: str
    transform: ImageTransform = field(default_factory=ImageTransform)
    conditional: bool = True

    def __post_init__(self) -> None:
        if self.labels is not None and self.labels.shape[0] != self.images.shape[0]:
            raise ConfigError(f"{self.source}: {self.labels.shape[0]} labels for {self.images.shape[0]} images")
        if self.labels is not None and self.labels.size and int(self.labels.max()) >= len(self.class_names):
            raise ConfigError(
                f"{self.source}: label {int(self.labels.max())} but only {len(self.class_names)} classes "
                f"({', '.join(self.class_names)})"
            )
        self._images = torch.from_numpy(self.images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"ImageDataset({len(self)} images of {self.images.shape[1:]}, {self.num_classes} classes, {self.source})"

    @property
    def num_classes(self) -> int:
        """K, the width of the one-hot labels (0: trained unconditionally)."""
        return len(self.class_names) if self.conditional and self.labels is not None else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the stored images."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of a training sample (after padding)."""
        channels, height, width = self.image_shape
        left, right, top, bottom = self.transform.padding(height, width)
        return (channels, height + top + bottom, width + left + right)

    def class_counts(self) -> list[int]:
        """Images per class (empty without labels)."""
        if self.labels is None:
            return []
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) as one-hot float32 rows (B, K)."""
        return torch.nn.functional.one_hot(labels.long(), len(self.class_names)).float()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch | torch.Tensor:
        """A training batch of ``n`` transformed images (with their one-hot ``class_labels`` when conditional)."""
        index = torch.randint(len(self), (n,), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.transform.horizontal_flip else None
        target = self.transform(self._images[index], flips)
        if not self.num_classes:
            return target
        labels = torch.from_numpy(self.labels)[index]
        return Batch(target, {"class_labels": self.one_hot(labels)})

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Model outputs in [-1, 1] (B, C, H', W') as uint8 images (B, C, H, W): cropped, clipped, rounded."""
        x = self.transform.crop(x, *self.image_shape[1:])
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def load_image_dataset(
    path: str | os.PathLike[str],
    split: Split = "train",
    *,
    labels: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    transform: ImageTransform | None = None,
    conditional: bool = True,
    limit: int | None = None,
) -> ImageDataset:
    """Read a labelled image data set.

    Args:
        path: a folder of IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, the test
            split ``t10k-...``), a folder with one subfolder of PNG files per class (sorted names: classes 0, 1,
            ...; a ``train``/``test`` subfolder of that layout is used for the split when present), an IDX image
            file, an ``.npz`` file with ``images`` (and ``labels``, ``class_names``) or an ``.npy`` image array.
        split: ``train`` or ``test`` (for folders).
        labels: an IDX or ``.npy`` file of labels for an image file given alone.
        class_names: names of the classes (default: the PNG folder names, the archive's, else "0", "1", ...).
        transform: flips and padding for training.
        conditional: whether training sees the labels.
        limit: keep the first ``limit`` images only.

    Raises:
        ConfigError: one line naming the file: missing files, wrong magic numbers, mismatched image and label
            counts, arrays that are no images, labels beyond the classes.
    """
    path = Path(path)
    found_names: tuple[str, ...] | None = None
    label_values: np.ndarray | None = None
    if not path.exists():
        raise ConfigError(f"'{path}': no such file or folder")
    if path.is_dir():
        if is_idx_folder(path):
            image_file, label_file = find_idx_pair(path, split)
            images, label_values, where = read_idx(image_file), read_idx(label_file), f"'{label_file}'"
        else:
            folder = path / split if (path / split).is_dir() else path
            images, label_values, found_names = _read_png_folder(folder)
            where = f"'{folder}'"
        source = f"'{path}' ({split})"
    else:
        suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
        if suffix == ".npz":
            images, label_values, found_names = _read_npz(path)
        elif suffix == ".npy":
            images = _read_npy(path)
        else:
            images = read_idx(path)
        where, source = f"'{path}'", f"'{path}'"
    image_where = source if path.is_dir() else f"'{path}'"
    if path.is_dir() and is_idx_folder(path):
        image_where = f"'{find_idx_pair(path, split)[0]}'"
    stack = to_uint8(images, image_where)
    if labels is not None:
        if label_values is not None:
            raise ConfigError(f"'{path}' holds its own labels; leave data.labels out")
        label_path = Path(labels)
        label_values = _read_npy(label_path) if label_path.suffix == ".npy" else read_idx(label_path)
        where = f"'{label_path}'"
    if label_values is not None:
        label_values = _labels_array(label_values, stack.shape[0], where)
    if limit is not None:
        stack = stack[:limit]
        label_values = label_values[:limit] if label_values is not None else None
    if class_names is None:
        if found_names is not None:
            class_names = found_names
        elif label_values is not None and label_values.size:
            class_names = tuple(str(index) for index in range(int(label_values.max()) + 1))
        else:
            class_names = ()
    return ImageDataset(
        images=stack,
        labels=label_values,
        class_names=tuple(class_names),
        source=source,
        transform=transform or ImageTransform(),
        conditional=conditional,
    )


# -- where Fashion-MNIST is -------------------------------------------------------------------------------------
FASHION_MNIST_FOLDERS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files (looked in when no folder is given)."""
FASHION_MNIST_SITE = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_MNIST_HOWTO = (
    "install Debian's package ('apt-get install dataset-fashion-mnist': IDX files in /usr/share/datasets/fashion-mnist)"
    f", or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    f"t10k-labels-idx1-ubyte.gz from {FASHION_MNIST_SITE} into a folder and give that folder"
)


@dataclass(frozen=True)
class SplitSummary:
    """What one split of an image folder holds: image count, (C, H, W), images per class."""

    split: str
    images: int
    shape: tuple[int, int, int]
    class_counts: list[int]


def find_fashion_mnist(source: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the Fashion-MNIST IDX files: ``source``, else the first of :data:`FASHION_MNIST_FOLDERS` that
    holds them. ConfigError saying how to get them when none does."""
    from diffscale.validation import option_name

    candidates = [Path(source)] if source is not None else [Path(item) for item in FASHION_MNIST_FOLDERS]
    for candidate in candidates:
        try:
            find_idx_pair(candidate, "train")
            find_idx_pair(candidate, "test")
            return candidate
        except (ConfigError, OSError):
            continue
    looked = ", ".join(f"'{item}'" for item in candidates)
    raise ConfigError(f"no Fashion-MNIST IDX files in {looked}; {FASHION_MNIST_HOWTO} ({option_name('source')})")


def summarise_image_folder(
    folder: str | os.PathLike[str],
    splits: Sequence[Split] = ("train", "test"),
    class_names: Sequence[str] | None = None,
) -> list[SplitSummary]:
    """Read every split of ``folder`` (checking the files) and summarise it (:class:`SplitSummary` per split)."""
    summaries = []
    for split in splits:
        data = load_image_dataset(folder, split, class_names=class_names)
        summaries.append(SplitSummary(split, len(data), data.image_shape, data.class_counts()))
    return summaries
