"""sparsekern.data: dataset readers on small files in the real formats, and the in-memory BatchLoader."""
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.request

import numpy as np
import pytest
import torch

from sparsekern.data import DATASETS, BatchLoader, ImageData, Split, load_dataset, loader_throughput
from sparsekern.data import cifar

N_BATCH, N_TEST = 20, 10  # CIFAR-10 fakes: 5 train batches of 20 images and a test batch of 10


# --------------------------------------------------------------------------------------------- fake CIFAR

def pixel_pattern(ids: np.ndarray) -> np.ndarray:
    """Image ``i``: value ``(i + 40c + 3r + w) % 256`` at channel c, row r, column w (so [0,0,0] is the id)."""
    c, r, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((ids[:, None, None, None] + 40 * c + 3 * r + w) % 256).astype(np.uint8)


def cifar_batch(ids, label_key=b"labels", num_classes=10) -> dict:
    ids = np.asarray(ids)
    # the real layout: each row is the R plane, then G, then B, each 32x32 row-major
    data = pixel_pattern(ids).reshape(len(ids), 3072)
    batch = {b"batch_label": b"fake", b"data": data, label_key: [int(i) % num_classes for i in ids],
             b"filenames": [b"img%d.png" % i for i in ids]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [99 - (int(i) % num_classes) for i in ids]  # must not be the labels used
    return batch


def cifar_files(name: str) -> dict[str, dict]:
    if name == "cifar10":
        files = {f"data_batch_{k + 1}": cifar_batch(range(k * N_BATCH, (k + 1) * N_BATCH)) for k in range(5)}
        files["test_batch"] = cifar_batch(range(100, 100 + N_TEST))
        return files
    return {"train": cifar_batch(range(100), b"fine_labels", 100),
            "test": cifar_batch(range(100, 100 + N_TEST), b"fine_labels", 100)}


def write_extracted(folder, name):
    os.makedirs(folder, exist_ok=True)
    for file, batch in cifar_files(name).items():
        with open(os.path.join(folder, file), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def archive_bytes(name) -> bytes:
    spec = cifar.SPECS[name]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for file, batch in cifar_files(name).items():
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{spec.folder}/{file}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def make_cifar(tmp_path, name, layout):
    """Return the ``root`` to pass for each accepted layout."""
    spec = cifar.SPECS[name]
    if layout == "parent":
        write_extracted(tmp_path / spec.folder, name)
        return tmp_path
    if layout == "folder":
        write_extracted(tmp_path / spec.folder, name)
        return tmp_path / spec.folder
    (tmp_path / spec.archive).write_bytes(archive_bytes(name))
    return tmp_path


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["parent", "folder", "archive"])
def test_cifar_layouts_decode_and_split(tmp_path, name, layout):
    data = load_dataset(name, make_cifar(tmp_path, name, layout), val_size=10)
    num_classes = 10 if name == "cifar10" else 100
    assert isinstance(data, ImageData) and data.name == name and data.num_classes == num_classes
    assert (data.in_channels, data.image_size, data.crop_padding, data.flip) == (3, 32, 4, True)
    assert data.mean == cifar.SPECS[name].mean and data.std == cifar.SPECS[name].std
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, N_TEST)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.labels.dtype == torch.int64
        ids = split.images[:, 0, 0, 0].long()
        # channel/row/column order as in the file format, and labels (fine ones for CIFAR-100) kept with images
        assert torch.equal(split.images, torch.from_numpy(pixel_pattern(ids.numpy())))
        assert torch.equal(split.labels, ids % num_classes)
    train_ids, val_ids = data.train.images[:, 0, 0, 0].long(), data.val.images[:, 0, 0, 0].long()
    assert set(train_ids.tolist()).isdisjoint(val_ids.tolist())
    assert sorted(train_ids.tolist() + val_ids.tolist()) == list(range(100))
    # documented: the last val_size entries of a permutation from Generator().manual_seed(0)
    expected_val = torch.randperm(100, generator=torch.Generator().manual_seed(0))[-10:].sort().values
    assert torch.equal(val_ids, expected_val)
    assert torch.equal(data.test.images[:, 0, 0, 0].long(), torch.arange(100, 100 + N_TEST))


def test_cifar_val_size_zero_and_default_too_big(tmp_path):
    root = make_cifar(tmp_path, "cifar10", "parent")
    data = load_dataset("cifar10", root, val_size=0)
    assert (len(data.train), len(data.val)) == (100, 0)
    _, val, _ = data.loaders(8)
    assert len(val) == 0 and list(val) == []
    with pytest.raises(ValueError, match="val_size.*5000"):  # the 45k/5k default needs the real 50k images
        load_dataset("cifar10", root)


def test_cifar_image_size(tmp_path):
    root = make_cifar(tmp_path, "cifar10", "parent")
    assert load_dataset("cifar10", root, image_size=32, val_size=10).image_size == 32
    with pytest.raises(ValueError, match="image_size.*32.*got 64"):
        load_dataset("cifar10", root, image_size=64, val_size=10)


def test_cifar_missing_data_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    for needle in ("cifar10", str(tmp_path), "cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch",
                   "cifar-10-python.tar.gz", "download=True", "--download", cifar.URLS["cifar10"]):
        assert needle in msg, needle
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar100", None)
    msg = str(err.value)
    for needle in ("cifar100", "root=None", "cifar-100-python/", "train", "test", "cifar-100-python.tar.gz"):
        assert needle in msg, needle
    with pytest.raises(FileNotFoundError, match="root=None"):  # nowhere to download to
        load_dataset("cifar10", None, download=True)


def test_cifar_incomplete_folder_names_missing_file(tmp_path):
    write_extracted(tmp_path / "cifar-10-batches-py", "cifar10")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load_dataset("cifar10", tmp_path, val_size=10)


def test_cifar_corrupt_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_extracted(folder, "cifar10")
    bad = cifar_batch(range(20))
    bad[b"data"] = bad[b"data"][:, :3000]  # short rows
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(bad, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2.*3072.*\(20, 3000\)"):
        load_dataset("cifar10", tmp_path, val_size=10)
    payload = pickle.dumps(cifar_batch(range(20)), protocol=2)
    (folder / "data_batch_2").write_bytes(payload[: len(payload) // 2])  # truncated file
    with pytest.raises(ValueError, match="data_batch_2.*not a readable CIFAR pickle"):
        load_dataset("cifar10", tmp_path, val_size=10)
    shutil.rmtree(folder)
    archive = archive_bytes("cifar10")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive[: len(archive) // 2])
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, val_size=10)


def test_cifar_refuses_pickled_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_extracted(folder, "cifar10")

    class Evil:
        def __reduce__(self):
            return (os.remove, (str(folder / "test_batch"),))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="data_batch_1.*refusing"):
        load_dataset("cifar10", tmp_path, val_size=10)
    assert (folder / "test_batch").exists()


class FakeResponse(io.BytesIO):
    headers = {}


def test_cifar_download(tmp_path, monkeypatch):
    payload = archive_bytes("cifar10")
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append((url, timeout))
        return FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    # without download=True nothing is fetched
    with pytest.raises(FileNotFoundError):
        load_dataset("cifar10", tmp_path, val_size=10)
    assert calls == []
    # a wrong checksum (the real md5 vs this fake archive) saves nothing, not even a temporary file
    with pytest.raises(ValueError, match="md5"):
        load_dataset("cifar10", tmp_path, download=True, val_size=10)
    assert calls == [(cifar.URLS["cifar10"], 30)] and os.listdir(tmp_path) == []
    monkeypatch.setitem(cifar.MD5, "cifar10", hashlib.md5(payload).hexdigest())
    root = tmp_path / "new_folder"  # created on demand
    data = load_dataset("cifar10", root, download=True, val_size=10)
    assert len(data.train) == 90 and (root / "cifar-10-python.tar.gz").read_bytes() == payload
    load_dataset("cifar10", root, download=True, val_size=10)  # present now: not fetched again
    assert len(calls) == 2


# -------------------------------------------------------------------------------------------- digits

def test_digits_split_matches_demo():
    from sparsekern.demo import load_splits

    data = load_dataset("digits")
    assert (len(data.train), len(data.val), len(data.test)) == (1257, 270, 270)
    assert (data.num_classes, data.in_channels, data.image_size, data.crop_padding, data.flip) == (10, 1, 8, 1, False)
    demo = load_splits(8)
    assert torch.equal(data.train.labels, demo.y_train)
    assert torch.equal(data.val.labels, demo.y_val)
    assert torch.equal(data.test.labels, demo.y_test)
    # same images in the same order: standardise ours (x16 = the demo's raw 0..16 scale) as the demo does
    x = data.train.images.reshape(len(data.train), -1) * 16
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.testing.assert_close((x - mean) / std, demo.x_train)
    torch.testing.assert_close((data.test.images.reshape(270, -1) * 16 - mean) / std, demo.x_test)


def test_digits_upscale_and_range():
    data = load_dataset("digits", image_size=32)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.float32 and split.images.shape[1:] == (1, 32, 32)
        assert split.images.min() >= 0 and split.images.max() <= 1
    assert data.image_size == 32 and data.crop_padding == 4
    assert data.mean[0] == pytest.approx(data.train.images.mean().item())
    assert data.std[0] == pytest.approx(data.train.images.std().item())
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", val_size=100)


def test_unknown_dataset_and_bad_arguments():
    with pytest.raises(ValueError) as err:
        load_dataset("mnist")
    assert all(name in str(err.value) for name in DATASETS) and "'mnist'" in str(err.value)
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("digits", image_size=8.0)
    with pytest.raises(TypeError, match="root"):
        load_dataset("cifar10", 3)


# -------------------------------------------------------------------------------------- tiny imagenet

WNIDS = ["n03", "n01", "n02"]  # not sorted: the class index is the line order
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def make_tiny(parent):
    from PIL import Image

    folder = parent / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for c, wnid in enumerate(WNIDS):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (64, 64), COLORS[c]).save(images / f"{wnid}_{k}.JPEG")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    Image.new("L", (64, 64), 128).save(folder / "train" / "n01" / "images" / "n01_gray.JPEG")  # grayscale
    lines = []
    for k, c in enumerate([2, 0, 1, 1, 0, 2]):
        Image.new("RGB", (64, 64), COLORS[c]).save(folder / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def class_of(images):
    """The class whose colour is nearest each image's mean colour (JPEG shifts solid colours a little)."""
    mean = images.float().mean((2, 3))
    return torch.cdist(mean, torch.tensor(COLORS, dtype=torch.float32)).argmin(1)


def test_tinyimagenet_layout_labels_and_cache(tmp_path):
    folder = make_tiny(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path, val_size=3)
    assert (data.num_classes, data.in_channels, data.image_size, data.crop_padding, data.flip) == (3, 3, 64, 8, True)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 3, 6)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 64, 64)
    assert torch.equal(data.test.labels, torch.tensor([2, 0, 1, 1, 0, 2]))
    assert torch.equal(class_of(data.test.images), data.test.labels)
    assert sorted(data.val.labels.tolist()) == [0, 1, 2]  # stratified: one per class
    gray = (data.train.images[:, 0] == data.train.images[:, 2]).all((1, 2)) & (data.train.labels == 1)
    assert gray.sum() == 1  # the grayscale file became 3 equal channels
    coloured = ~gray
    assert torch.equal(class_of(torch.cat([data.train.images[coloured], data.val.images])),
                       torch.cat([data.train.labels[coloured], data.val.labels]))
    cache = folder / "sparsekern_cache_tinyimagenet.pt"
    assert cache.is_file()
    shutil.rmtree(folder / "train")
    shutil.rmtree(folder / "val")
    again = load_dataset("tinyimagenet", folder, val_size=3)  # root = the folder itself; served from the cache
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.test.images, data.test.images)
    assert len(load_dataset("tinyimagenet", folder, val_size=0).train) == 13
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("tinyimagenet", folder, image_size=32)


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("tinyimagenet", tmp_path, download=True)
    msg = str(err.value)
    for needle in ("tinyimagenet", str(tmp_path), "tiny-imagenet-200", "wnids.txt", "val_annotations.txt",
                   "train/<wnid>/images", "no automatic download", "tiny-imagenet-200.zip"):
        assert needle in msg, needle
    with pytest.raises(FileNotFoundError, match="root=None"):
        load_dataset("tinyimagenet")


# --------------------------------------------------------------------------------------------- loader

def id_split(n=10, channels=3, size=4):
    """uint8 images whose every pixel is the image's index, labels = index: batches show what they hold."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size).contiguous()
    return Split(images, torch.arange(n))


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_loader_deterministic_per_seed_and_epoch():
    split = Split(torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8), torch.arange(50))
    kw = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), shuffle=True, augment=True, crop_padding=2, flip=True,
              seed=7)
    a, b = BatchLoader(split, 16, **kw), BatchLoader(split, 16, **kw)
    for epoch in range(3):  # history: a has run epochs 0..2 before epoch 3, b has not
        epoch_batches(a, epoch)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = epoch_batches(a, 3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither used nor advanced
    torch.manual_seed(999)
    assert same(first, epoch_batches(b, 3))
    assert not same(first, epoch_batches(b, 4))
    assert not same(first, epoch_batches(BatchLoader(split, 16, **{**kw, "seed": 8}), 3))
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == list(range(50)) and labels.tolist() != list(range(50))


@pytest.mark.parametrize("n", [10, 11])
def test_loader_shards(n):
    split = id_split(n)
    shards = []
    for rank in range(2):
        loader = BatchLoader(split, 4, mean=0.0, std=1.0, shuffle=True, seed=3, rank=rank, world_size=2)
        loader.set_epoch(1)
        shards.append(torch.cat([y for _, y in loader]).tolist())
        assert len(loader) == 2
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    whole = BatchLoader(split, 4, mean=0.0, std=1.0, shuffle=True, seed=3)  # the same epoch, unsharded
    whole.set_epoch(1)
    order = whole.indices().tolist()
    padded = order + order[: len(order) % 2]  # like DistributedSampler: repeat the start to a multiple of 2
    assert shards == [padded[0::2], padded[1::2]]
    if n % 2 == 0:
        assert set(shards[0]).isdisjoint(shards[1])


def test_loader_len_and_drop_last():
    split = id_split(10)
    assert [len(y) for _, y in BatchLoader(split, 4, mean=0.0, std=1.0)] == [4, 4, 2]
    assert len(BatchLoader(split, 4, mean=0.0, std=1.0)) == 3
    dropped = BatchLoader(split, 4, mean=0.0, std=1.0, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert len(BatchLoader(split, 4, mean=0.0, std=1.0, world_size=3, rank=2)) == 1  # 4 samples per rank
    assert torch.cat([y for _, y in BatchLoader(split, 3, mean=0.0, std=1.0)]).tolist() == list(range(10))
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(split, 4, mean=0.0, std=1.0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="mean.*3"):
        BatchLoader(split, 4, mean=(0.0, 0.0), std=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(split, 0, mean=0.0, std=1.0)


def test_loader_normalisation():
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x, y = next(iter(BatchLoader(Split(images, torch.arange(6)), 6, mean=mean, std=std)))
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and torch.equal(y, torch.arange(6))
    torch.testing.assert_close(x, expected)
    floats = torch.rand(6, 1, 5, 5)  # float images (digits) are already on the [0, 1] scale
    x, _ = next(iter(BatchLoader(Split(floats, torch.arange(6)), 6, mean=0.5, std=0.5)))
    torch.testing.assert_close(x, (floats - 0.5) / 0.5)


def pattern_batch(n=64, size=6):
    """n copies of one image with distinct nonzero pixels, so every window and flip is recognisable."""
    image = (torch.arange(size * size, dtype=torch.uint8) + 1).view(1, 1, size, size)
    return Split(image.expand(n, 2, size, size).contiguous(), torch.zeros(n, dtype=torch.long)), image[0]


def test_loader_crop_shifts_with_zero_padding():
    split, image = pattern_batch()
    p = 2
    loader = BatchLoader(split, 64, mean=0.0, std=1.0, augment=True, crop_padding=p)
    x, _ = next(iter(loader))
    assert x.shape == (64, 2, 6, 6)
    raw = (x * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(image, (p, p, p, p))
    windows = {(dy, dx): padded[:, dy:dy + 6, dx:dx + 6] for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
    seen = set()
    for out in raw:
        match = [k for k, w in windows.items() if torch.equal(out, w.expand(2, 6, 6))]
        assert len(match) == 1  # a window of the zero-padded image, the same in both channels
        seen.add(match[0])
    assert len(seen) > 5 and seen != {(p, p)}  # really shifted, by various offsets


def test_loader_flip_and_no_augmentation_in_eval():
    split, image = pattern_batch()
    x, _ = next(iter(BatchLoader(split, 64, mean=0.0, std=1.0, augment=True, flip=True)))
    raw = (x * 255).round().to(torch.uint8)
    plain = torch.tensor([torch.equal(out, image.expand(2, 6, 6)) for out in raw])
    flipped = torch.tensor([torch.equal(out, image.flip(-1).expand(2, 6, 6)) for out in raw])
    assert bool((plain | flipped).all()) and plain.any() and flipped.any()
    # flip and crop off when augment is off
    x, _ = next(iter(BatchLoader(split, 64, mean=0.0, std=1.0, crop_padding=2, flip=True)))
    assert torch.equal((x * 255).round().to(torch.uint8), split.images)
    data = ImageData("fake", 1, 2, 6, (0.0, 0.0), (1.0, 1.0), split, split, split, crop_padding=2, flip=True)
    train, val, test = data.loaders(8, seed=1)
    assert (train.shuffle, train.augment, train.crop_padding, train.flip) == (True, True, 2, True)
    for loader in (val, test):
        assert not loader.shuffle and loader.batch_size == 256 and loader.world_size == 1
        x, _ = next(iter(loader))
        assert torch.equal((x * 255).round().to(torch.uint8), split.images)
    train, val, _ = data.loaders(512, rank=1, world_size=2, augment=False, eval_batch_size=32)
    assert (train.rank, train.world_size, train.augment, val.world_size, val.batch_size) == (1, 2, False, 1, 32)
    assert data.loaders(512)[1].batch_size == 512


def test_loader_throughput():
    split = Split(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), torch.zeros(300, dtype=torch.long))
    loader = BatchLoader(split, 64, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, augment=True, crop_padding=4,
                         flip=True)
    assert loader_throughput(loader) > 0 and loader_throughput(loader, batches=2) > 0
    with pytest.raises(ValueError, match="loader"):
        loader_throughput(BatchLoader(Split(split.images[:0], split.labels[:0]), 4, mean=0.0, std=1.0))
