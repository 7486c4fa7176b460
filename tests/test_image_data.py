"""Image data: IDX/MNIST, .npz, image folders, HF datasets and their checks (artrainer.data.images)."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from artrainer.data import DataLoader
from artrainer.data.images import (check_images, check_labels, from_hf_dataset, load_image_folder, load_mnist,
                                   load_npz, read_idx, split_train_val)

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
# Digits per class in the MNIST test set, and its first ten labels: published facts of the data.
MNIST_T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_T10K_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture(scope="module")
def mnist() -> dict[str, np.ndarray]:
    if not MNIST.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MNIST} is missing; CI must provide it")
        pytest.skip(f"{MNIST} is absent (outside CI the shared data is optional)")
    return load_mnist(MNIST)


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keeps the `imagefolder` builder's cache out of the home directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def write_idx(path: Path, array: np.ndarray, type_code: int, *, compress: bool = False) -> None:
    """An IDX file written by hand from the format's definition, independent of read_idx."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def rows(data: dict[str, np.ndarray]) -> list[tuple[int, bytes]]:
    """(label, image bytes) pairs in a canonical order, for comparing sets of labelled images."""
    return sorted(zip(data["labels"].tolist(), (image.tobytes() for image in data["images"])))


# MNIST -------------------------------------------------------------------------------------------


def test_mnist_test_set(mnist):
    images, labels = mnist["images"], mnist["labels"]
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int32
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 10_000 and counts.tolist() == MNIST_T10K_COUNTS
    assert labels[:10].tolist() == MNIST_T10K_FIRST_LABELS
    assert (images.min(), images.max()) == (0, 255)
    assert images.mean() / 255 == pytest.approx(0.1325, abs=1e-4)  # the test set's well-known pixel mean


def test_mnist_batches_through_the_data_loader(mnist):
    loader = DataLoader(mnist, batch_size=64, seed=3)
    batch = next(iter(loader))
    assert len(loader) == 10_000 // 64
    assert batch["images"].shape == (64, 28, 28, 1) and batch["images"].dtype == np.uint8
    assert batch["labels"].shape == (64,) and batch["labels"].dtype == np.int32


def test_load_mnist_reads_raw_files_and_names_a_missing_one(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = pixels(rng, 5, 4, 3), np.array([0, 9, 3, 3, 1], np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x08, compress=True)  # gzip found by content
    data = load_mnist(tmp_path, split="train")
    np.testing.assert_array_equal(data["images"], images[..., None])
    np.testing.assert_array_equal(data["labels"], labels)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path, split="train")


def test_load_mnist_rejects_labels_out_of_step_or_out_of_range(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), 0x08)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2], np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*2 entries for 3 images"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 10], np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"< 10 \(num_classes=10\), got 10 at index 2"):
        load_mnist(tmp_path)


# IDX ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                         (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_matches_a_handwritten_file(tmp_path, compress, dtype, code):
    array = (np.arange(24) * (-1 if np.dtype(dtype).kind != "u" else 1) * 3).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / "tiny.idx", array, code, compress=compress)
    loaded = read_idx(tmp_path / "tiny.idx")
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("content, message", [
    (b"\x08\x03\x00\x00", "not an IDX file: its magic number is '08 03 00 00'"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "not an IDX file"),  # unknown type code
    (b"\x00\x00", "not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX file"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", r"shape \(3,\) \(3 bytes\) but 2 bytes follow"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "but 2 bytes follow"),
    (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")[:-6], "corrupt gzip file"),
])
def test_read_idx_rejects_malformed_files_naming_them(tmp_path, content, message):
    (tmp_path / "bad.idx").write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(tmp_path / "bad.idx")
    assert "bad.idx" in str(error.value)


# .npz --------------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = pixels(rng, 6, 5, 5, 3), np.array([0, 1, 2, 0, 1, 2], np.int64)
    np.savez(tmp_path / "set.npz", x=images.astype(np.int16), y=labels)
    data = load_npz(tmp_path / "set.npz", images_key="x", labels_key="y")
    assert data["images"].dtype == np.uint8 and data["labels"].dtype == np.int32
    np.testing.assert_array_equal(data["images"], images)
    np.testing.assert_array_equal(data["labels"], labels)
    assert list(load_npz(tmp_path / "set.npz", images_key="x", labels_key=None)) == ["images"]
    with pytest.raises(ValueError, match=r"lacks the arrays \['labels'\]; it has \['x', 'y'\]; pass labels_key=None"):
        load_npz(tmp_path / "set.npz", images_key="x")


class _Exploit:
    """Unpickling this would create `marker`: proof that load_npz never unpickles."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_npz_never_unpickles(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    np.savez(tmp_path / "objects.npz", images=np.zeros((1, 2, 2, 1), np.uint8),
             labels=np.array([_Exploit()], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz'\['labels'\] cannot be loaded without unpickling"):
        load_npz(tmp_path / "objects.npz")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="pickle.npz' cannot be loaded without unpickling"):
        load_npz(tmp_path / "pickle.npz")
    assert not _Exploit.marker.exists()
    np.save(tmp_path / "single.npy", np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(ValueError, match="single .npy array, not an .npz archive"):
        load_npz(tmp_path / "single.npy")


def test_npz_data_is_checked_with_the_archive_named(tmp_path):
    np.savez(tmp_path / "floats.npz", images=np.zeros((2, 3, 3, 1), np.float32), labels=np.array([0, 1]))
    with pytest.raises(TypeError, match=r"floats.npz'\['images'\] must hold integer pixel values"):
        load_npz(tmp_path / "floats.npz")


# Image folders and Hugging Face datasets ---------------------------------------------------------


def write_class_folders(root: Path, shape: tuple[int, ...], *, seed: int) -> list[tuple[int, bytes]]:
    """Two classes of random PNGs; returns the expected (label, pixels) rows, C axis included."""
    rng, expected = np.random.default_rng(seed), []
    for label, name in enumerate(["ant", "bee"]):  # sorted names: ant -> 0, bee -> 1
        (root / name).mkdir(parents=True)
        for index in range(3 + label):
            image = pixels(rng, *shape)
            PILImage.fromarray(image).save(root / name / f"{index}.png")
            expected.append((label, (image if image.ndim == 3 else image[..., None]).tobytes()))
    return sorted(expected)


@pytest.mark.parametrize("shape, channels", [((6, 5), 1), ((6, 5, 3), 3)], ids=["grey", "rgb"])
def test_image_folder_labels_and_pixels_are_exact(tmp_path, datasets_cache, shape, channels):
    expected = write_class_folders(tmp_path / "images", shape, seed=channels)
    data = load_image_folder(tmp_path / "images")
    assert data["images"].shape == (7, 6, 5, channels) and data["images"].dtype == np.uint8
    assert data["labels"].dtype == np.int32 and np.bincount(data["labels"]).tolist() == [3, 4]
    assert rows(data) == expected
    batch = next(iter(DataLoader(data, batch_size=4, last_batch="pad")))
    assert batch["images"].shape == (4, 6, 5, channels) and batch["labels"].shape == (4,)


def test_image_folder_without_classes_and_a_missing_root(tmp_path, datasets_cache):
    PILImage.fromarray(np.full((2, 3), 9, np.uint8)).save(tmp_path / "only.png")
    data = load_image_folder(tmp_path)
    assert list(data) == ["images"]
    np.testing.assert_array_equal(data["images"], np.full((1, 2, 3, 1), 9))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")


def hf_images(images: list, labels: list | None = None, label_feature=None) -> datasets.Dataset:
    columns, features = {"image": images}, {"image": datasets.Image()}
    if labels is not None:
        columns["label"], features["label"] = labels, label_feature or datasets.ClassLabel(names=["a", "b", "c"])
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def test_from_hf_dataset_decodes_arrays_and_respects_selection():
    rng = np.random.default_rng(2)
    images = [pixels(rng, 4, 4, 3) for _ in range(3)]
    dataset = hf_images(images, [2, 0, 1])
    data = from_hf_dataset(dataset)
    np.testing.assert_array_equal(data["images"], np.stack(images))
    assert data["labels"].tolist() == [2, 0, 1]
    picked = from_hf_dataset(dataset.select([2, 0]))  # an indices mapping, not a new table
    np.testing.assert_array_equal(picked["images"], np.stack([images[2], images[0]]))
    assert picked["labels"].tolist() == [1, 2]
    unlabeled = from_hf_dataset(dataset, label_column=None)
    assert list(unlabeled) == ["images"]


def test_from_hf_dataset_converts_modes_losslessly(tmp_path):
    grey = np.array([[0, 255], [17, 200]], np.uint8)
    colour = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    opaque = np.concatenate([colour, np.full((2, 2, 1), 255, np.uint8)], axis=-1)
    PILImage.fromarray(grey).save(tmp_path / "grey.png")
    PILImage.fromarray(opaque).save(tmp_path / "rgba.png")
    PILImage.fromarray(colour).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.png")
    PILImage.fromarray(grey > 100).save(tmp_path / "binary.png")
    PILImage.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), "LA").save(tmp_path / "la.png")

    data = from_hf_dataset(hf_images([str(tmp_path / name) for name in ("grey.png", "binary.png", "la.png")]),
                           label_column=None)
    np.testing.assert_array_equal(data["images"][..., 0], [grey, np.where(grey > 100, 255, 0), grey])
    mixed = from_hf_dataset(hf_images([str(tmp_path / "grey.png"), str(tmp_path / "rgba.png"),
                                       str(tmp_path / "palette.png")]), label_column=None)
    assert mixed["images"].shape == (3, 2, 2, 3)
    np.testing.assert_array_equal(mixed["images"][0], np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(mixed["images"][1], colour)
    np.testing.assert_array_equal(mixed["images"][2], colour)  # 4 colours: the palette is exact


def test_from_hf_dataset_refuses_what_it_cannot_convert_exactly(tmp_path):
    translucent = np.full((2, 2, 4), 255, np.uint8)
    translucent[0, 0, 3] = 128
    PILImage.fromarray(translucent).save(tmp_path / "glass.png")
    PILImage.fromarray(np.full((2, 2), 4000, np.uint16)).save(tmp_path / "deep.png")
    PILImage.fromarray(np.zeros((3, 2), np.uint8)).save(tmp_path / "tall.png")
    PILImage.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "ok.png")
    paths = {name: str(tmp_path / f"{name}.png") for name in ("glass", "deep", "tall", "ok")}

    with pytest.raises(ValueError, match=r"image 1 \('.*glass.png'\) .* translucent pixels .*alpha down to 128"):
        from_hf_dataset(hf_images([paths["ok"], paths["glass"]]), label_column=None)
    with pytest.raises(ValueError, match=r"deep.png'\) of column 'image' has mode 'I;16'"):
        from_hf_dataset(hf_images([paths["deep"]]), label_column=None)
    with pytest.raises(ValueError, match=r"tall.png'\) of column 'image' is 3x2 \(HxW\) but image 0 is 2x2"):
        from_hf_dataset(hf_images([paths["ok"], paths["tall"]]), label_column=None)


def test_from_hf_dataset_argument_and_label_errors():
    image = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"label_column='label' is not a column .* pass label_column=None"):
        from_hf_dataset(hf_images([image]))
    with pytest.raises(ValueError, match=r"image_column='img' is not a column of the dataset; it has \['image'\]"):
        from_hf_dataset(hf_images([image]), image_column="img", label_column=None)
    with pytest.raises(TypeError, match=r"select a split first"):
        from_hf_dataset(datasets.DatasetDict({"train": hf_images([image])}))
    arrays = datasets.Dataset.from_dict({"image": [image.tolist()]})
    with pytest.raises(TypeError, match=r"column 'image' has feature .* not datasets.Image\(\)"):
        from_hf_dataset(arrays, label_column=None)
    with pytest.raises(ValueError, match=r"column 'label' must be class ids >= 0, got -1 at index 1"):
        from_hf_dataset(hf_images([image, image], [0, -1]))  # -1: datasets' "no label"
    with pytest.raises(TypeError, match=r"column 'label' must hold integer class ids, got dtype <U3 \(class names"):
        from_hf_dataset(hf_images([image], ["cat"], datasets.Value("string")))
    free = from_hf_dataset(hf_images([image, image], [0, 7], datasets.Value("int64")))
    assert free["labels"].tolist() == [0, 7]  # no ClassLabel: any id >= 0


# check_images / check_labels ---------------------------------------------------------------------


def test_check_images_returns_uint8_unchanged():
    images = np.arange(2 * 3 * 3, dtype=np.int64).reshape(2, 3, 3, 1) * 14
    checked = check_images(images, channels=1, size=(3, 3))
    assert checked.dtype == np.uint8
    np.testing.assert_array_equal(checked, images)
    already = np.zeros((1, 2, 2, 3), np.uint8)
    assert check_images(already) is already


@pytest.mark.parametrize("images, kwargs, error, message", [
    (np.zeros((1, 2, 2, 1), np.float32), {}, TypeError, r"pics must hold integer pixel values .* float32 .*scale"),
    (np.zeros((1, 2, 2, 1), bool), {}, TypeError, r"pics must hold integer pixel values in \[0, 255\], got dtype bool"),
    (np.zeros((2, 2, 1), np.uint8), {}, ValueError, r"pics must have shape \[N, H, W, C\], got shape \(2, 2, 1\)"),
    (np.zeros((1, 2, 2), np.uint8), {}, ValueError, r"add a channel axis"),
    (np.zeros((0, 2, 2, 1), np.uint8), {}, ValueError, r"pics must have N, H and W >= 1, got shape \(0, 2, 2, 1\)"),
    (np.zeros((1, 2, 2, 4), np.uint8), {}, ValueError, r"pics must have C in \(1, 3\) .* got C=4"),
    (np.zeros((1, 2, 2, 1), np.uint8), {"channels": 3}, ValueError, r"pics must have C in \(3,\) .* got C=1"),
    (np.zeros((1, 2, 3, 1), np.uint8), {"size": (3, 2)}, ValueError, r"pics must be 3x2 \(HxW\), got 2x3"),
    (np.full((1, 2, 2, 1), 256, np.int16), {}, ValueError, r"pics must hold values in \[0, 255\], got .* to 256"),
    (np.full((1, 2, 2, 1), -1, np.int32), {}, ValueError, r"pics must hold values in \[0, 255\], got .*-1 to -1"),
    (np.zeros((1, 2, 2, 1), np.uint8), {"channels": 4}, ValueError, r"channels must be one of \(1, 3\) or None; got 4 \(int\)"),
    (np.zeros((1, 2, 2, 1), np.uint8), {"size": 2}, TypeError, r"size must be None or a \(height, width\) pair, got 2"),
])
def test_check_images_errors(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        check_images(images, name="pics", **kwargs)


@pytest.mark.parametrize("labels, num_classes, kwargs, error, message", [
    (np.array([0.0, 1.0]), 2, {}, TypeError, r"ys must hold integer class ids, got dtype float64"),
    (np.array(["a", "b"]), 2, {}, TypeError, r"ys must hold integer class ids, got dtype <U1 \(class names"),
    (np.zeros((2, 1), np.int32), 2, {}, ValueError, r"ys must have shape \[N\], got shape \(2, 1\)"),
    (np.array([0, 1, 1]), 2, {"num_examples": 2}, ValueError, r"ys has 3 entries for 2 images"),
    (np.array([0, -3, 1]), 2, {}, ValueError, r"ys must be class ids >= 0, got -3 at index 1"),
    (np.array([0, 2, 1]), 2, {}, ValueError, r"ys must be class ids < 2 \(num_classes=2\), got 2 at index 1"),
    (np.array([0, 2**31], np.int64), None, {}, ValueError, r"ys must be class ids < 2147483648 \(int32 range\)"),
    (np.array([0]), 0, {}, ValueError, r"num_classes must be an int >= 1; got 0 \(int\)"),
    (np.array([0]), True, {}, TypeError, r"num_classes must be an int >= 1; got True \(bool\)"),
])
def test_check_labels_errors(labels, num_classes, kwargs, error, message):
    with pytest.raises(error, match=message):
        check_labels(labels, num_classes, name="ys", **kwargs)


def test_check_labels_returns_int32():
    checked = check_labels(np.array([3, 0, 9], np.uint8), 10, num_examples=3)
    assert checked.dtype == np.int32 and checked.tolist() == [3, 0, 9]
    assert check_labels([5, 70_000], None).tolist() == [5, 70_000]


# split_train_val ---------------------------------------------------------------------------------


def indexed_data(n: int) -> dict[str, np.ndarray]:
    """Image i is filled with i % 256 and labelled i, so a split that tears pairs apart shows."""
    return {"images": np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 1)),
            "labels": np.arange(n, dtype=np.int32)}


def test_split_train_val_is_disjoint_covering_and_seeded():
    data = indexed_data(100)
    train, val = split_train_val(data, 90, 10, seed=5)
    assert train["images"].shape == (90, 2, 2, 1) and val["labels"].shape == (10,)
    assert not set(train["labels"].tolist()) & set(val["labels"].tolist())
    assert sorted([*train["labels"].tolist(), *val["labels"].tolist()]) == list(range(100))
    for part in (train, val):
        np.testing.assert_array_equal(part["images"][:, 0, 0, 0], part["labels"] % 256)
    again, _ = split_train_val(data, 90, 10, seed=5)
    other, _ = split_train_val(data, 90, 10, seed=6)
    assert again["labels"].tolist() == train["labels"].tolist() != other["labels"].tolist()
    smaller_train, smaller_val = split_train_val(data, 30, 20, seed=5)
    assert len(smaller_train["labels"]) + len(smaller_val["labels"]) == 50


@pytest.mark.parametrize("data, n_train, n_val, kwargs, error, message", [
    (indexed_data(10), 9, 2, {}, ValueError, r"n_train \+ n_val = 9 \+ 2 = 11 exceeds the 10 examples"),
    (indexed_data(10), 10, 0, {}, ValueError, r"n_val must be an int >= 1; got 0 \(int\)"),
    (indexed_data(10), 5.0, 1, {}, TypeError, r"n_train must be an int >= 1; got 5.0 \(float\)"),
    (indexed_data(10), 5, 1, {"seed": -1}, ValueError, r"seed must be an int >= 0; got -1 \(int\)"),
    ({"images": np.zeros((3, 1, 1, 1)), "labels": np.zeros(2)}, 1, 1, {}, ValueError,
     r"one shared leading length, got lengths \{'images': 3, 'labels': 2\}"),
    ({}, 1, 1, {}, TypeError, r"data must be a non-empty dict"),
])
def test_split_train_val_errors(data, n_train, n_val, kwargs, error, message):
    with pytest.raises(error, match=message):
        split_train_val(data, n_train, n_val, **kwargs)


def test_split_of_mnist_feeds_train_and_eval_loaders(mnist):
    train, val = split_train_val(mnist, 9_000, 1_000)
    assert len(DataLoader(train, batch_size=100)) == 90
    batch = next(iter(DataLoader(val, batch_size=128, shuffle=False, last_batch="pad")))
    assert batch["images"].shape == (128, 28, 28, 1) and batch["example_mask"].sum() == 128
