"""Tiny ImageNet (200 classes, 64x64 RGB) from the standard ``tiny-imagenet-200`` folder.

Layout (``root`` is that folder or its parent): ``wnids.txt`` (one class id per line; class index = line
order), ``train/<wnid>/images/*.JPEG`` (500 per class), ``val/images/*.JPEG`` with ``val/val_annotations.txt``
(tab-separated: file name, wnid, 4 box ints). The official test set has no labels, so the official val set
(10,000 labelled images) is our **test** split, and our val split is held out of train: ``val_size`` (default
5,000 = 25 per class) chosen per class from a generator seeded with 0 (stratified; see ``holdout``).

Decoding 110,000 JPEGs takes a while, so the decoded tensors are cached once in
``<tiny-imagenet-200>/sparsekern_cache_tinyimagenet.pt`` (about 1.4 GB, written atomically, read with
``weights_only=True``) and rebuilt when missing or when ``wnids.txt`` no longer matches it (delete it to force
a rebuild after changing the images). The val split is
drawn after loading, so changing ``val_size`` needs no rebuild. Augmentation: random crops after 8 pixels of
zero padding (CIFAR's 4 px on 32 px images, scaled to 64 px) and horizontal flips.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from ..atomic_file import atomic_write
from .errors import check_image_size, missing_data
from .holdout import check_val_size, stratified_holdout
from .splits import ImageData, Split

FOLDER = "tiny-imagenet-200"
CACHE_NAME = "sparsekern_cache_tinyimagenet.pt"
CACHE_VERSION = 1
SIZE = 64
DEFAULT_VAL_SIZE = 5000
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MEAN = (0.485, 0.456, 0.406)  # ImageNet's statistics: Tiny ImageNet is a subset of it
STD = (0.229, 0.224, 0.225)
CROP_PADDING = 8
IMAGE_SUFFIXES = (".jpeg", ".jpg")


def find_folder(root: str | None) -> str | None:
    """The dataset folder: ``root`` itself or ``root/tiny-imagenet-200``, whichever holds the data or cache."""
    if root is None:
        return None
    for folder in (root, os.path.join(root, FOLDER)):
        if os.path.isfile(os.path.join(folder, "wnids.txt")) or os.path.isfile(os.path.join(folder, CACHE_NAME)):
            return folder
    return None


def _missing(root: str | None, detail: str = "") -> FileNotFoundError:
    expected = [f"{FOLDER}/ holding wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
                f"val/val_annotations.txt (root may also be this folder)"]
    how = (f"there is no automatic download for Tiny ImageNet; download {URL} and unzip it into root "
           f"(download=True / --download does not apply)")
    return missing_data("tinyimagenet", root, expected, how, detail)


def _read_wnids(folder: str) -> list[str]:
    path = os.path.join(folder, "wnids.txt")
    with open(path, encoding="utf-8") as f:
        wnids = [line.strip() for line in f if line.strip()]
    if not wnids:
        raise ValueError(f"{path}: expected one class id per line, got an empty file")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: expected distinct class ids, got duplicates")
    return wnids


def _list_images(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))


def _file_list(folder: str, wnids: list[str]):
    """``(train_paths, train_labels, test_paths, test_labels)`` from the folder layout."""
    train_paths, train_labels = [], []
    for label, wnid in enumerate(wnids):
        images = os.path.join(folder, "train", wnid, "images")
        if not os.path.isdir(images):
            raise FileNotFoundError(f"tinyimagenet: expected the folder {images} (class {wnid}, line {label + 1} of "
                                    f"wnids.txt), which does not exist; the dataset looks incomplete, re-extract {URL}")
        names = _list_images(images)
        train_paths += [os.path.join(images, n) for n in names]
        train_labels += [label] * len(names)
    annotations = os.path.join(folder, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise FileNotFoundError(f"tinyimagenet: expected the file {annotations} (labels of the official val set, "
                                f"our test split), which does not exist; re-extract {URL}")
    index = {w: i for i, w in enumerate(wnids)}
    test_paths, test_labels = [], []
    with open(annotations, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(f"{annotations}: line {number}: expected 'file<TAB>wnid<TAB>4 box ints' with a "
                                 f"wnid from wnids.txt, got {line.strip()!r}")
            test_paths.append(os.path.join(folder, "val", "images", fields[0]))
            test_labels.append(index[fields[1]])
    return train_paths, train_labels, test_paths, test_labels


def _decode_one(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))  # some Tiny ImageNet images are grayscale
    except FileNotFoundError:
        raise FileNotFoundError(f"tinyimagenet: expected the image {path}, which does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    if pixels.shape != (SIZE, SIZE, 3):
        raise ValueError(f"{path}: expected a {SIZE}x{SIZE} image, got {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels


def _decode(paths: list[str], desc: str) -> torch.Tensor:
    """All of ``paths`` as one uint8 ``(N, 3, 64, 64)`` tensor; PIL decodes outside the GIL, so threads help."""
    out = torch.empty((len(paths), 3, SIZE, SIZE), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, pixels in enumerate(tqdm(pool.map(_decode_one, paths), total=len(paths), desc=desc, unit="img")):
            out[i] = torch.from_numpy(pixels).permute(2, 0, 1)
    return out


def _load_cache(path: str, wnids: list[str] | None):
    """The cached tensors, or None when absent, unreadable or made for another ``wnids.txt``."""
    if not os.path.isfile(path):
        return None
    try:
        cache = torch.load(path, weights_only=True)
    except Exception as e:  # a damaged cache is rebuilt, not fatal
        warnings.warn(f"tinyimagenet: ignoring the unreadable cache {path} ({type(e).__name__}: {e})")
        return None
    keys = {"version", "wnids", "train_images", "train_labels", "test_images", "test_labels"}
    if not isinstance(cache, dict) or not keys <= set(cache) or cache["version"] != CACHE_VERSION:
        return None
    if wnids is not None and list(cache["wnids"]) != wnids:
        return None
    return cache


def _build_cache(folder: str, wnids: list[str]) -> dict:
    train_paths, train_labels, test_paths, test_labels = _file_list(folder, wnids)
    cache = {
        "version": CACHE_VERSION, "wnids": wnids,
        "train_images": _decode(train_paths, "decode tinyimagenet train"),
        "train_labels": torch.tensor(train_labels, dtype=torch.int64),
        "test_images": _decode(test_paths, "decode tinyimagenet val (our test)"),
        "test_labels": torch.tensor(test_labels, dtype=torch.int64),
    }
    path = os.path.join(folder, CACHE_NAME)
    try:
        with atomic_write(path) as f:
            torch.save(cache, f)
    except OSError as e:  # a read-only data folder costs a re-decode next time, nothing more
        warnings.warn(f"tinyimagenet: could not write the cache {path} ({e}); images will be decoded again")
    return cache


def load_tinyimagenet(root: str | None, *, image_size=None, download: bool = False, val_size=None) -> ImageData:
    """Tiny ImageNet as uint8 ``ImageData``; ``download`` is accepted but only used to explain it is unavailable."""
    check_image_size(image_size, "tinyimagenet", native=SIZE)
    folder = find_folder(root)
    if folder is None:
        raise _missing(root)
    wnids_path = os.path.join(folder, "wnids.txt")
    wnids = _read_wnids(folder) if os.path.isfile(wnids_path) else None
    cache = _load_cache(os.path.join(folder, CACHE_NAME), wnids)
    if cache is None:
        if wnids is None:
            raise _missing(root, f"{wnids_path} does not exist (and the cache {CACHE_NAME} is unusable).")
        cache = _build_cache(folder, wnids)
    num_classes = len(cache["wnids"])
    images, labels = cache["train_images"], cache["train_labels"]
    val_size = check_val_size(val_size, len(labels), "tinyimagenet", DEFAULT_VAL_SIZE)
    train_idx, val_idx = stratified_holdout(labels, val_size, num_classes)
    return ImageData(
        name="tinyimagenet", num_classes=num_classes, in_channels=3, image_size=SIZE, mean=MEAN, std=STD,
        train=Split(images[train_idx], labels[train_idx]), val=Split(images[val_idx], labels[val_idx]),
        test=Split(cache["test_images"], cache["test_labels"]),
        crop_padding=CROP_PADDING, flip=True)
