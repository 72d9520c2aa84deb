"""The Fashion-MNIST IDX files (Debian's dataset-fashion-mnist) as uint8 arrays, for the image benchmarks.

IDX layout (LeCun et al.): a big-endian header ``0x00 0x00 <type 0x08 = uint8> <ndim>``, ``ndim`` big-endian
uint32 sizes, then the values in C order; the files are gzip-compressed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PREFIXES = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in a (gzip-compressed) IDX file."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"'{path}': not a uint8 IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"'{path}': {values.size} values, header says {shape}")
    return values.reshape(shape)


def fashion_mnist(split: str, directory: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the ``train`` or ``test`` split."""
    prefix = PREFIXES[split]
    images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels
