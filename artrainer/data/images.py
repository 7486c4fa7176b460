"""Image data sets as ``{'images': uint8 [N, H, W, C], 'labels': int32 [N]}``, ready for DataLoader.

Pixels stay integers 0..255 all the way to the model: autoregressive image models
predict each pixel as one of 256 values, so the data keeps exactly those targets (and
takes a quarter of float32's memory); scaling for the inputs is the model's business.
C is 1 (grey) or 3 (RGB). Every entry point ends in :func:`check_images` and
:func:`check_labels`, so all of them reject the same bad data with the same messages.
Nothing here unpickles: ``.npz`` files load with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from artrainer.validation import require_int

if TYPE_CHECKING:
    import datasets
    import PIL.Image

ImageData = dict[str, np.ndarray]

#: IDX type codes (the magic number's third byte); all multi-byte types are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHANNELS = (1, 3)
_MNIST_CLASSES = 10
#: The first bytes of an .npy file, of a pickle (protocol >= 2) and of a zip file such as an
#: .npz (the second zip magic starts an empty archive): load_npz tells them apart by these.
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_MAGIC = b"\x80"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (MNIST's format), gzipped or not, in native byte order.

    Gzip is recognised by its magic bytes rather than the file name. The whole header
    is checked against the file size before anything is allocated, so a corrupt file
    fails with a ValueError naming it instead of a reshape error or a huge allocation.
    """
    where = os.fspath(path)
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{where!r} is a corrupt gzip file: {exc}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        codes = ", ".join(f"{code:#04x}" for code in _IDX_DTYPES)
        raise ValueError(f"{where!r} is not an IDX file: its magic number is {raw[:4].hex(' ')!r}, but IDX "
                         f"starts with two zero bytes, a type code in ({codes}) and the number of dimensions")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{where!r} is a truncated IDX file: {len(raw)} bytes cannot hold the "
                         f"{header}-byte header of a {ndim}-dimensional array")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{where!r} is a malformed IDX file: its header promises a {dtype.newbyteorder('=')} "
                         f"array of shape {shape} ({expected} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist(directory: str | os.PathLike, *, split: str = "t10k") -> ImageData:
    """MNIST (or any drop-in such as Fashion-MNIST) from the canonical IDX files in ``directory``.

    Reads ``{split}-images-idx3-ubyte`` and ``{split}-labels-idx1-ubyte``, each raw or
    with ``.gz``; ``split`` is ``'train'`` (60,000 images) or ``'t10k'`` (10,000).
    """
    images_path = _find_idx(directory, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{split}-labels-idx1-ubyte")
    images = read_idx(images_path)
    if images.ndim != 3:
        raise ValueError(f"{os.fspath(images_path)!r} holds an array of shape {images.shape}, "
                         "not MNIST images [N, H, W]")
    return _image_data(images[..., None], read_idx(labels_path), num_classes=_MNIST_CLASSES,
                       images_name=f"images in {os.fspath(images_path)!r}",
                       labels_name=f"labels in {os.fspath(labels_path)!r}")


def load_npz(path: str | os.PathLike, *, images_key: str = "images",
             labels_key: str | None = "labels") -> ImageData:
    """Images (and labels unless ``labels_key=None``) from an ``.npz`` archive, never unpickling.

    A missing key is an error rather than silently unlabeled data, so a typo in
    ``labels_key`` cannot drop the labels; pass ``labels_key=None`` for unlabeled images.
    """
    where = os.fspath(path)
    keys = [key for key in (images_key, labels_key) if key is not None]
    refused = "cannot be loaded without unpickling (allow_pickle=False)"
    with open(path, "rb") as file:
        magic = file.read(len(_NPY_MAGIC))
    if magic.startswith(_NPY_MAGIC):
        raise ValueError(f"{where!r} holds a single .npy array, not an .npz archive of {keys}")
    if magic[:1] == _PICKLE_MAGIC:
        raise ValueError(f"{where!r} {refused}: it is a Python pickle, not an .npz archive")
    if not magic.startswith(_ZIP_MAGICS):
        raise ValueError(f"{where!r} is not a valid .npz archive (a zip file of .npy arrays): "
                         f"it starts with {magic!r}")
    unreadable = (zipfile.BadZipFile, EOFError, zlib.error)  # A truncated or corrupt zip file.
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise ValueError(f"{where!r} is a truncated or corrupt .npz archive: {exc}") from None
    with loaded as archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            hint = "; pass labels_key=None for unlabeled images" if labels_key in missing else ""
            raise ValueError(f"{where!r} lacks the arrays {missing}; it has {archive.files}{hint}")
        arrays = {}
        for key in keys:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:  # numpy's refusals name neither the file nor the array.
                raise ValueError(f"{where!r}[{key!r}] {refused}: {exc}") from None
            except unreadable as exc:
                raise ValueError(f"{where!r}[{key!r}] is truncated or corrupt: {exc}") from None
    return _image_data(arrays[images_key], arrays.get(labels_key), num_classes=None,
                       images_name=f"{where!r}[{images_key!r}]", labels_name=f"{where!r}[{labels_key!r}]")


def load_image_folder(root: str | os.PathLike) -> ImageData:
    """Image files under ``root``, read by Hugging Face's ``imagefolder`` builder.

    Class subfolders become labels 0, 1, ... in sorted name order (``root/cat/1.png``,
    ``root/dog/2.png``); with a single class or a flat folder there are no labels, as in
    ``datasets``. A ``root`` holding ``train/`` and ``test/`` folders gives the train split.
    Decoding follows :func:`from_hf_dataset`.
    """
    where = os.fspath(root)
    if not os.path.isdir(where):
        raise FileNotFoundError(f"image folder {where!r} does not exist or is not a directory")
    import datasets  # Slow to import; only the Hugging Face entry points need it.

    dataset = datasets.load_dataset("imagefolder", data_dir=where, split="train")
    return from_hf_dataset(dataset, label_column="label" if "label" in dataset.column_names else None)


def from_hf_dataset(dataset: datasets.Dataset, *, image_column: str = "image",
                    label_column: str | None = "label") -> ImageData:
    """Decodes the ``datasets.Image`` column of an in-memory ``datasets.Dataset`` into one array.

    All images must share one height and width. Grey images give C=1 and colour images
    C=3; a set mixing both comes back as RGB, the grey ones repeated over three channels
    (lossless). Binary and palette images are converted to grey and RGB. RGBA and grey +
    alpha are accepted only when fully opaque, and lose the alpha channel: translucent
    pixels have no single right background, so they are refused rather than guessed.
    Labels must be integer class ids, checked against the ``ClassLabel`` when there is one.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        hint = "; select a split first, e.g. dataset['train']" if isinstance(dataset, datasets.DatasetDict) else ""
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}{hint}")
    for argument, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in dataset.column_names:
            hint = "; pass label_column=None for unlabeled images" if argument == "label_column" else ""
            raise ValueError(f"{argument}={column!r} is not a column of the dataset; "
                             f"it has {dataset.column_names}{hint}")
    feature = dataset.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise TypeError(f"column {image_column!r} has feature {feature!r}, not datasets.Image(); "
                        f"for arrays, pass np.asarray(dataset.with_format('numpy')[{image_column!r}]) "
                        "to check_images")
    if len(dataset) == 0:
        raise ValueError("dataset has no rows")

    # Undecoded values carry each file's path for error messages; decoding goes through
    # the column's own feature so its mode and EXIF handling match the rest of `datasets`.
    decoder = dataclasses.replace(feature, decode=True)
    stored = dataset.cast_column(image_column, dataclasses.replace(feature, decode=False))[image_column]
    pixels: list[np.ndarray] = []
    for index, value in enumerate(stored):
        where = f"image {index}" + (f" ({value['path']!r})" if value.get("path") else "")
        try:
            array = _pixels(decoder.decode_example(value))
        except ValueError as exc:
            raise ValueError(f"{where} of column {image_column!r} {exc}") from None
        if pixels and array.shape[:2] != pixels[0].shape[:2]:
            (height, width), (first_height, first_width) = array.shape[:2], pixels[0].shape[:2]
            raise ValueError(f"{where} of column {image_column!r} is {height}x{width} (HxW) but image 0 is "
                             f"{first_height}x{first_width}; all images must share one size, so resize them first")
        pixels.append(array)

    channels = max(array.shape[2] for array in pixels)
    images = np.empty((len(pixels), *pixels[0].shape[:2], channels), np.uint8)
    for index, array in enumerate(pixels):
        images[index] = array  # Broadcasting repeats a grey image over RGB's channels.

    labels = num_classes = None
    if label_column is not None:
        label_feature = dataset.features[label_column]
        num_classes = label_feature.num_classes if isinstance(label_feature, datasets.ClassLabel) else None
        labels = np.asarray(list(dataset[label_column]))
    return _image_data(images, labels, num_classes=num_classes, images_name=f"column {image_column!r}",
                       labels_name=f"column {label_column!r}")


def check_images(images: ArrayLike, *, name: str = "images", channels: int | None = None,
                 size: Sequence[int] | None = None) -> np.ndarray:
    """``images`` as uint8 ``[N, H, W, C]``, or a TypeError/ValueError saying what is wrong.

    ``channels`` (1 or 3) and ``size`` (``(height, width)``) pin C and H, W when the model
    needs them. Floats are refused rather than rescaled: whether they mean 0..1 or 0..255
    is exactly the guess that silently ruins an image model.
    """
    require_int("channels", channels, optional=True, allowed=f"one of {_CHANNELS}", ok=lambda c: c in _CHANNELS)
    if size is not None and (isinstance(size, str) or not isinstance(size, Sequence) or len(size) != 2):
        raise TypeError(f"size must be None or a (height, width) pair, got {size!r}")
    images = np.asarray(images)
    if images.dtype.kind not in "iu":
        hint = " (scale floats yourself, e.g. np.round(x * 255))" if images.dtype.kind == "f" else ""
        raise TypeError(f"{name} must hold integer pixel values in [0, 255], got dtype {images.dtype}{hint}")
    if images.ndim != 4:
        hint = " (add a channel axis for grey images: images[..., None])" if images.ndim == 3 else ""
        raise ValueError(f"{name} must have shape [N, H, W, C], got shape {images.shape}{hint}")
    if 0 in images.shape[:3]:
        raise ValueError(f"{name} must have N, H and W >= 1, got shape {images.shape}")
    allowed = _CHANNELS if channels is None else (channels,)
    if images.shape[3] not in allowed:
        raise ValueError(f"{name} must have C in {allowed} (1 grey, 3 RGB), got C={images.shape[3]} "
                         f"in shape {images.shape}")
    if size is not None and images.shape[1:3] != tuple(size):
        raise ValueError(f"{name} must be {size[0]}x{size[1]} (HxW), got {images.shape[1]}x{images.shape[2]} "
                         f"in shape {images.shape}")
    if images.dtype != np.uint8:
        low, high = images.min(), images.max()
        if low < 0 or high > 255:
            raise ValueError(f"{name} must hold values in [0, 255], got values from {low} to {high}")
    return images.astype(np.uint8, copy=False)


def check_labels(labels: ArrayLike, num_classes: int | None, *, name: str = "labels",
                 num_examples: int | None = None) -> np.ndarray:
    """``labels`` as int32 ``[N]`` class ids in ``[0, num_classes)``, or an error saying what is wrong.

    ``num_classes=None`` only requires ids >= 0 (and int32-sized); ``num_examples`` is the
    number of images, so a labels array that has drifted out of step with them is caught.
    """
    if num_classes is not None:
        require_int("num_classes", num_classes, minimum=1)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        hint = " (class names? encode them, e.g. Dataset.class_encode_column)" if labels.dtype.kind in "USO" else ""
        raise TypeError(f"{name} must hold integer class ids, got dtype {labels.dtype}{hint}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got shape {labels.shape}")
    if num_examples is not None and len(labels) != num_examples:
        raise ValueError(f"{name} has {len(labels)} entries for {num_examples} images; "
                         "there must be exactly one label per image")
    if labels.size:
        lowest, highest = int(np.argmin(labels)), int(np.argmax(labels))
        if labels[lowest] < 0:
            raise ValueError(f"{name} must be class ids >= 0, got {labels[lowest]} at index {lowest}")
        limit, what = (2**31, "int32 range") if num_classes is None else (num_classes, f"num_classes={num_classes}")
        if labels[highest] >= limit:
            raise ValueError(f"{name} must be class ids < {limit} ({what}), got {labels[highest]} at index {highest}")
    return labels.astype(np.int32, copy=False)


def split_train_val(data: Mapping[str, ArrayLike], n_train: int, n_val: int, *,
                    seed: int = 0) -> tuple[ImageData, ImageData]:
    """Disjoint train and validation sets: ``n_train`` and ``n_val`` rows of a seeded permutation.

    Every array in ``data`` is split with the same rows, so images keep their labels;
    rows beyond ``n_train + n_val`` are left out. The split depends on ``seed`` alone.
    """
    if not isinstance(data, Mapping) or not data:
        raise TypeError(f"data must be a non-empty dict of equal-length arrays, got {data!r:.80}")
    arrays = {key: np.asarray(value) for key, value in data.items()}
    lengths = {key: array.shape[0] if array.ndim else None for key, array in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) > 1:
        raise ValueError(f"data must hold arrays with one shared leading length, got lengths {lengths}")
    num_examples = next(iter(lengths.values()))
    n_train, n_val, seed = (require_int(argument, value, minimum=minimum) for argument, value, minimum in
                            (("n_train", n_train, 1), ("n_val", n_val, 1), ("seed", seed, 0)))
    if n_train + n_val > num_examples:
        raise ValueError(f"n_train + n_val = {n_train} + {n_val} = {n_train + n_val} exceeds the "
                         f"{num_examples} examples in data")
    order = np.random.default_rng(seed).permutation(num_examples)
    train, val = order[:n_train], order[n_train:n_train + n_val]
    return ({key: array[train] for key, array in arrays.items()},
            {key: array[val] for key, array in arrays.items()})


def _find_idx(directory: str | os.PathLike, name: str) -> Path:
    candidates = [Path(directory) / name, Path(directory) / f"{name}.gz"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {name} file: neither {os.fspath(candidates[0])!r} nor "
                            f"{os.fspath(candidates[1])!r} exists")


def _pixels(image: PIL.Image.Image) -> np.ndarray:
    """One PIL image as uint8 ``[H, W, 1 or 3]``; raises ValueError (worded to follow its name)."""
    if image.mode in ("1", "P", "PA"):
        image = image.convert("L" if image.mode == "1" else "RGBA")  # RGBA keeps palette transparency.
    if image.mode in ("LA", "RGBA"):
        lowest_alpha = image.getextrema()[-1][0]
        if lowest_alpha < 255:
            raise ValueError(f"has translucent pixels (mode {image.mode!r}, alpha down to {lowest_alpha}); "
                             "only fully opaque alpha is accepted, so flatten it onto a background first")
        image = image.convert(image.mode[:-1])
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"has mode {image.mode!r}; allowed are 8-bit grey 'L' and 'RGB', plus '1', 'P' "
                         "and fully opaque 'LA' / 'RGBA', which are converted")
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _image_data(images: ArrayLike, labels: ArrayLike | None, *, num_classes: int | None, images_name: str,
                labels_name: str) -> ImageData:
    data = {"images": check_images(images, name=images_name)}
    if labels is not None:
        data["labels"] = check_labels(labels, num_classes, name=labels_name, num_examples=len(data["images"]))
    return data
