"""Tests of image data (diffscale.data.images, data.kind: images): the IDX reader against bytes written here, PNG
folders and NumPy arrays, the training transform, the one-line errors, and the real Fashion-MNIST files when the
Debian package is installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffscale.config import config_from_dict
from diffscale.config.images import ImageData
from diffscale.data.batch import Batch
from diffscale.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FOLDERS,
    ImageDataset,
    ImageTransform,
    find_fashion_mnist,
    load_image_dataset,
    read_idx,
    to_uint8,
    write_idx,
)
from diffscale.validation import ConfigError
from tests.conftest import run_cli

FASHION_MNIST = Path(FASHION_MNIST_FOLDERS[0])
HAS_FASHION_MNIST = (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand: 0x0000, the type code, the dimension count, big-endian sizes, the values."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def write_fashion_like(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train") -> None:
    """Gzipped IDX files named as Fashion-MNIST's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(0x08, images.shape, images.astype(np.uint8).tobytes()))
    )
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(0x08, labels.shape, labels.astype(np.uint8).tobytes()))
    )


# -- IDX ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_gives_the_bytes_written(tmp_path: Path, compressed: bool) -> None:
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(0x08, (2, 3, 4), values.tobytes())
    path = tmp_path / ("images.gz" if compressed else "images")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    result = read_idx(path)
    assert result.dtype == np.uint8 and result.shape == (2, 3, 4)
    np.testing.assert_array_equal(result, values)
    assert result[1, 2, 3] == 23  # C order: 12 + 2 * 4 + 3


def test_read_idx_big_endian_types(tmp_path: Path) -> None:
    path = tmp_path / "ints.idx"
    path.write_bytes(idx_bytes(0x0C, (3,), struct.pack(">3i", -2, 70000, 5)))
    np.testing.assert_array_equal(read_idx(path), [-2, 70000, 5])
    path.write_bytes(idx_bytes(0x0D, (2,), struct.pack(">2f", 0.5, -1.25)))
    np.testing.assert_array_equal(read_idx(path), np.array([0.5, -1.25], dtype=np.float32))
    assert read_idx(path).dtype.isnative


def test_write_idx_round_trips(tmp_path: Path) -> None:
    values = np.array([[1, -7], [300, 2]], dtype=np.int16)
    written = write_idx(tmp_path / "a-idx2-ubyte.gz", values)
    assert gzip.decompress(written.read_bytes())[:4] == bytes([0, 0, 0x0B, 2])
    np.testing.assert_array_equal(read_idx(written), values)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x08\x03\x00\x00" + bytes(8), r"not an IDX file \(magic number 08030000"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "unknown IDX type code 0x42"),
        (idx_bytes(0x08, (2, 2), bytes(3)), r"declares shape \(2, 2\) .* \(truncated\)"),
        (idx_bytes(0x08, (2,), bytes(3)), r"trailing data"),
        (bytes([0, 0, 8, 3, 0, 0]), "truncated IDX header"),
        (b"", r"not an IDX file \(magic number \(empty file\)"),
    ],
)
def test_read_idx_refuses_bad_files_in_one_line_naming_them(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_damaged_gzip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (4,), bytes(4)))[:-6])
    with pytest.raises(ConfigError, match=f"'{path}': a damaged gzip file"):
        read_idx(path)


# -- data sets ------------------------------------------------------------------------------------------------
def test_idx_folder_with_labels_and_test_split(tmp_path: Path) -> None:
    images = np.stack([np.full((4, 5), value, dtype=np.uint8) for value in (0, 50, 255)])
    write_fashion_like(tmp_path, images, np.array([2, 0, 1]))
    write_fashion_like(tmp_path, images[:2], np.array([1, 1]), prefix="t10k")
    data = load_image_dataset(tmp_path, "train")
    assert data.images.shape == (3, 1, 4, 5) and data.labels.tolist() == [2, 0, 1]
    assert data.class_names == ("0", "1", "2") and data.class_counts() == [1, 1, 1]
    test = load_image_dataset(tmp_path, "test")
    assert len(test) == 2 and test.labels.tolist() == [1, 1]


def test_mismatched_counts_name_the_labels_file(tmp_path: Path) -> None:
    write_fashion_like(tmp_path, np.zeros((3, 4, 4), np.uint8), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte.gz': 2 labels for 3 images"):
        load_image_dataset(tmp_path)


def test_missing_split_names_what_was_looked_for(tmp_path: Path) -> None:
    write_fashion_like(tmp_path, np.zeros((1, 4, 4), np.uint8), np.array([0]))
    with pytest.raises(ConfigError, match=r"no test images IDX file \(looked for t10k-images-idx3-ubyte"):
        load_image_dataset(tmp_path, "test")


def test_png_class_folders(tmp_path: Path) -> None:
    from PIL import Image

    pictures = {"boot": [10, 20], "coat": [200]}
    for name, values in pictures.items():
        (tmp_path / name).mkdir()
        for index, value in enumerate(values):
            Image.fromarray(np.full((6, 7), value, dtype=np.uint8), mode="L").save(tmp_path / name / f"{index}.png")
    data = load_image_dataset(tmp_path)
    assert data.class_names == ("boot", "coat") and data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 1, 6, 7)
    assert data.images[:, 0, 0, 0].tolist() == [10, 20, 200]


def test_npz_and_npy(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([0, 1, 2, 1, 0]), class_names=["a", "b", "c"])
    data = load_image_dataset(tmp_path / "set.npz")
    assert data.images.shape == (5, 3, 8, 8) and data.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(data.images, np.moveaxis(images, -1, 1))
    np.save(tmp_path / "floats.npy", np.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4))
    np.save(tmp_path / "labels.npy", np.array([1, 0]))
    floats = load_image_dataset(tmp_path / "floats.npy", labels=tmp_path / "labels.npy")
    assert floats.images[0, 0, 0, 0] == 0 and floats.images[-1, 0, -1, -1] == 255
    assert floats.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 5)), r"shape \(4, 5\) is not a stack of images"),
        (np.zeros((2, 5, 6, 7)), r"no channel axis of 1, 3 or 4"),
        (np.full((2, 4, 4), 2.0), r"floating-point pixel values 2..2 are outside \[0, 1\]"),
        (np.full((2, 4, 4), 300), r"integer pixel values 300..300 are outside 0..255"),
        (np.array([[["a"]]]), r"no images|not an image type"),
    ],
)
def test_non_image_arrays_are_refused_naming_the_file(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, array)
    with pytest.raises(ConfigError, match=message) as caught:
        load_image_dataset(path)
    assert f"'{path}'" in str(caught.value)


def test_npz_without_images(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", pixels=np.zeros((2, 4, 4)))
    with pytest.raises(ConfigError, match=r"w.npz': no array 'images' \(holds pixels\)"):
        load_image_dataset(tmp_path / "w.npz")


def test_to_uint8_keeps_exact_values() -> None:
    assert to_uint8(np.array([[[0.0, 1.0], [0.5, 0.2]]]), "x")[0, 0].tolist() == [[0, 255], [128, 51]]


# -- the training transform ----------------------------------------------------------------------------------
def test_transform_normalises_pads_and_flips() -> None:
    image = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8).expand(2, 1, 3, 3).contiguous()
    transform = ImageTransform(horizontal_flip=True, pad_to=6)
    x = transform(image, flips=torch.tensor([False, True]))
    assert x.shape == (2, 1, 6, 6)
    assert transform.padding(3, 3) == (1, 2, 1, 2)
    torch.testing.assert_close(x[0, 0, 1, 1:4], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    torch.testing.assert_close(x[1, 0, 1, 1:4], torch.tensor([51 / 127.5 - 1, 1.0, -1.0]))
    border = torch.ones(6, 6, dtype=torch.bool)
    border[1:4, 1:4] = False
    assert (x[:, 0][:, border] == -1).all()
    torch.testing.assert_close(transform.crop(x, 3, 3)[0], image[0].float() / 127.5 - 1)


def test_sample_pairs_images_with_their_one_hot_labels() -> None:
    labels = np.array([0, 1, 2, 3, 1])
    images = (labels * 60).astype(np.uint8)[:, None, None, None] * np.ones((1, 1, 4, 4), np.uint8)
    data = ImageDataset(images, labels, ("0", "1", "2", "3"), "arrays")
    batch = data.sample(64, torch.Generator().manual_seed(0))
    assert isinstance(batch, Batch) and batch.target.shape == (64, 1, 4, 4)
    drawn = batch.cond["class_labels"].argmax(dim=1)
    assert batch.cond["class_labels"].sum(dim=1).eq(1).all()
    torch.testing.assert_close(batch.target[:, 0, 0, 0], (drawn * 60).float() / 127.5 - 1)
    assert set(drawn.tolist()) == {0, 1, 2, 3}


# -- the data: section ----------------------------------------------------------------------------------------
def _config(path: Path, **data: object) -> dict:
    return {
        "model": {"arch": "ddpmpp", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                  "attn_resolutions": [], "label_dropout": 0.1},
        "data": {"kind": "images", "path": str(path), "height": 4, "width": 4, "num_classes": 3, **data},
    }  # fmt: skip


def test_section_sets_the_label_width_and_the_padded_shape(tmp_path: Path) -> None:
    config = config_from_dict(_config(tmp_path, pad_to=8))
    assert config.data_shape() == (1, 8, 8)
    assert config.resolved_model().label_dim == 3


def test_section_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.label_dim = 5 does not match data.num_classes = 3"):
        bad = _config(tmp_path)
        bad["model"]["label_dim"] = 5
        config_from_dict(bad)
    with pytest.raises(ConfigError, match=r"pad_to = 3 is smaller than the 4 x 4 images"):
        config_from_dict(_config(tmp_path, pad_to=3))
    with pytest.raises(ConfigError, match=r"class_names has 1 names for num_classes = 3"):
        config_from_dict(_config(tmp_path, class_names=["a"]))


def test_section_checks_the_files_against_what_it_declares(tmp_path: Path) -> None:
    write_fashion_like(tmp_path, np.zeros((2, 5, 5), np.uint8), np.array([0, 4]))
    with pytest.raises(ConfigError, match=r"its images are 1 x 5 x 5 \(C x H x W\), the configuration declares 1 x 4"):
        ImageData(path=str(tmp_path), height=4, width=4).build()
    with pytest.raises(ConfigError, match=r"label 4 but data.num_classes = 3"):
        ImageData(path=str(tmp_path), height=5, width=5, num_classes=3).build()
    data = ImageData(path=str(tmp_path), height=5, width=5, num_classes=6).build()
    assert data.class_names == ("0", "1", "2", "3", "4", "5") and data.num_classes == 6


# -- real data and the example-data command ------------------------------------------------------------------
@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_files() -> None:
    assert find_fashion_mnist() == FASHION_MNIST
    train = load_image_dataset(FASHION_MNIST, "train")
    test = load_image_dataset(FASHION_MNIST, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.class_counts() == [6000] * 10 and test.class_counts() == [1000] * 10
    assert train.labels[0] == 9 and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert train.images.min() == 0 and train.images.max() == 255


def test_example_data_fashion_mnist_checks_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fashion_like(tmp_path, np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 9, 9]))
    write_fashion_like(tmp_path, np.zeros((2, 28, 28), np.uint8), np.array([3, 3]), prefix="t10k")
    assert run_cli(["example-data", "fashion-mnist", "--source", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images of 28 x 28 (1 channel), 10 classes, 0-2 per class" in out
    assert "test: 2 images of 28 x 28 (1 channel), 10 classes, 0-2 per class" in out


def test_example_data_fashion_mnist_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["example-data", "fashion-mnist", "--source", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "apt-get install dataset-fashion-mnist" in error and "--source" in error
