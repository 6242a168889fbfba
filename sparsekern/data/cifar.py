"""CIFAR-10 and CIFAR-100 from their official "python version" archives, extracted or not.

Accepted under ``root``: the extracted folder (``cifar-10-batches-py/`` with ``data_batch_1`` ..
``data_batch_5`` and ``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``), ``root`` being that
folder itself, or the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), read straight
from the tar without extracting. Each file is a pickled dict: ``b"data"``, uint8 rows of 3072 bytes (the
R, G and B planes of a 32x32 image, each row-major), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``
(CIFAR-100).

Splits: the 50,000 training images are split 45,000 train / 5,000 val (``val_size``) by a fixed permutation
from ``torch.Generator().manual_seed(0)``: its last ``val_size`` indices are val (see ``holdout``). The
official test file is the test split.

The pickles are read with an unpickler that only builds dicts, lists, bytes and numpy arrays, so a
tampered file cannot run code (plain ``pickle.load`` would run whatever the file names).
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .download import download as fetch
from .errors import check_image_size, missing_data
from .holdout import check_val_size, random_holdout
from .splits import ImageData, Split

SIZE = 32
ROW_BYTES = 3 * SIZE * SIZE
DEFAULT_VAL_SIZE = 5000

# module-level tables, looked up at call time (tests substitute the md5 of a fake archive)
URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
MD5 = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "cifar10": CifarSpec("cifar-10-batches-py", "cifar-10-python.tar.gz",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), b"fine_labels",
                          100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# what a CIFAR pickle legitimately refers to: numpy's array reconstruction (numpy 1 and 2 module names,
# pickle protocols 2-5) and the bytes codec that Python 3's protocol 2 uses for bytes
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file holds only arrays and lists")


def _unpickle(f, where: str):
    try:
        return _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure to parse is a bad file, whatever the unpickler raised
        raise ValueError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e


def _decode(obj, spec: CifarSpec, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` from one unpickled batch dict."""
    if not isinstance(obj, dict) or b"data" not in obj or spec.label_key not in obj:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{where}: expected a dict with keys b'data' and {spec.label_key!r}, got {found}")
    data = obj[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{where}: b'data' expected a uint8 (N, {ROW_BYTES}) array ({ROW_BYTES} bytes per "
                         f"row: 3 planes of {SIZE}x{SIZE}), got {got}")
    try:
        labels = np.asarray(obj[spec.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {spec.label_key!r} expected a list of ints, got {e}") from e
    if labels.shape != (len(data),):
        raise ValueError(f"{where}: {spec.label_key!r} expected {len(data)} labels (one per row of b'data'), "
                         f"got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"{where}: {spec.label_key!r} expected labels in [0, {spec.num_classes}), "
                         f"got values from {labels.min()} to {labels.max()}")
    # row = R plane, G plane, B plane, each row-major: exactly the memory order of (3, 32, 32)
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, SIZE, SIZE).copy())
    return images, torch.from_numpy(labels.copy())


def _read_folder(folder: str, names: tuple[str, ...]) -> dict[str, object]:
    out = {}
    for name in names:
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            out[name] = _unpickle(f, path)
    return out


def _read_archive(path: str, names: tuple[str, ...]) -> dict[str, object]:
    """The wanted members of the tar, in one streaming pass (a .tar.gz cannot seek cheaply)."""
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rstrip("/").split("/")[-1]
                if member.isfile() and base in names and base not in out:
                    out[base] = _unpickle(io.BytesIO(tar.extractfile(member).read()), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{path}: not a readable tar archive ({type(e).__name__}: {e})") from e
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"{path}: expected the archive to contain {', '.join(names)}; missing {', '.join(missing)}")
    return out


def _complete(folder: str, names: tuple[str, ...]) -> bool:
    return all(os.path.isfile(os.path.join(folder, n)) for n in names)


def find_source(spec: CifarSpec, root: str | None):
    """``("folder", path)`` or ``("archive", path)`` for the data under ``root``, or None when absent.
    An extracted folder wins over the archive (no decompression)."""
    if root is None:
        return None
    names = spec.train_files + spec.test_files
    if os.path.isfile(root) and root.endswith((".tar.gz", ".tgz", ".tar")):
        return "archive", root
    for folder in (os.path.join(root, spec.folder), root):
        if _complete(folder, names):
            return "folder", folder
    archive = os.path.join(root, spec.archive)
    if os.path.isfile(archive):
        return "archive", archive
    return None


def _missing(name: str, spec: CifarSpec, root: str | None) -> FileNotFoundError:
    files = ", ".join(spec.train_files + spec.test_files)
    expected = [f"{spec.folder}/ holding {files} (the extracted archive; root may also be this folder)",
                f"{spec.archive} (the archive itself, read without extracting)"]
    detail = ""
    folder = os.path.join(root, spec.folder) if root is not None else None
    if folder is not None and os.path.isdir(folder):
        lacking = [n for n in spec.train_files + spec.test_files if not os.path.isfile(os.path.join(folder, n))]
        detail = f"{folder} exists but lacks {', '.join(lacking)}."
    how = (f"pass download=True (CLI: --download) to fetch {URLS[name]} into root, or download it by hand "
           f"and put it (extracted or not) in root")
    return missing_data(name, root, expected, how, detail)


def load_cifar(name: str, root: str | None, *, image_size=None, download: bool = False,
               val_size=None) -> ImageData:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) as ``ImageData``."""
    spec = SPECS[name]
    check_image_size(image_size, name, native=SIZE)
    source = find_source(spec, root)
    if source is None:
        if not download or root is None:
            raise _missing(name, spec, root)
        os.makedirs(root, exist_ok=True)
        archive = os.path.join(root, spec.archive)
        fetch(URLS[name], archive, MD5[name])
        source = ("archive", archive)
    kind, path = source
    names = spec.train_files + spec.test_files
    raw = _read_folder(path, names) if kind == "folder" else _read_archive(path, names)
    where = (lambda n: os.path.join(path, n)) if kind == "folder" else (lambda n: f"{path}:{n}")
    train = [_decode(raw[n], spec, where(n)) for n in spec.train_files]
    test = [_decode(raw[n], spec, where(n)) for n in spec.test_files]
    train_images = torch.cat([t[0] for t in train])
    train_labels = torch.cat([t[1] for t in train])
    val_size = check_val_size(val_size, len(train_labels), name, DEFAULT_VAL_SIZE)
    train_idx, val_idx = random_holdout(len(train_labels), val_size)
    return ImageData(
        name=name, num_classes=spec.num_classes, in_channels=3, image_size=SIZE, mean=spec.mean, std=spec.std,
        train=Split(train_images[train_idx], train_labels[train_idx]),
        val=Split(train_images[val_idx], train_labels[val_idx]),
        test=Split(torch.cat([t[0] for t in test]), torch.cat([t[1] for t in test])),
        crop_padding=4, flip=True)
