"""Dataset readers on generated canonical files and on the real JPEG copy; the restricted unpickler; the loader."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import JPEG_ARCHIVE, make_tar, write_cifar_batch
from slimlab.data import DatasetRequest, ImageSplit, load_dataset
from slimlab.data.cifar import load_pickle_batch
from slimlab.data.files import sha256_of
from slimlab.data.idx import read_idx
from slimlab.data.loader import DeviceLoader, balanced_subset, random_crop_flip, split_validation
from slimlab.errors import BadDataError, ConfigError, DataNotFoundError, SlimlabError


def request(tmp_path, roots=(), **kw):
    return DatasetRequest(roots=tuple(roots), cache_dir=tmp_path / "cache", download=False, **kw)


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_reader_matches_the_written_batches(tmp_path, cifar10_dir, as_archive, monkeypatch):
    if as_archive:
        archive = make_tar(cifar10_dir, tmp_path / "cifar-10-python.tar.gz")
        os.rename(cifar10_dir, tmp_path / "moved")
        roots = [tmp_path]
        with pytest.raises(DataNotFoundError, match="sha256"):  # not the official archive: the checksum catches it
            load_dataset("cifar10", request(tmp_path, roots))
        monkeypatch.setattr("slimlab.data.cifar.CIFAR10_SHA256", sha256_of(archive))
    else:
        roots = [cifar10_dir.parent]
    ds = load_dataset("cifar10", request(tmp_path, roots))
    assert ds.train.images.shape == (100, 3, 32, 32) and ds.test.images.shape == (10, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    # Row layout: 1024 red, 1024 green, 1024 blue values, row-major: pixel (c, y, x) = data[c*1024 + y*32 + x].
    batch1 = load_pickle_batch((tmp_path / ("moved" if as_archive else "cifar-10-batches-py") / "data_batch_1").read_bytes())
    assert ds.train.images[0, 1, 2, 3].item() == batch1["data"][0][1024 + 2 * 32 + 3]
    assert isinstance(batch1["data"], np.ndarray)  # a real numpy array, as in the canonical files
    assert ds.train.labels[:20].tolist() == list(batch1["labels"])


@pytest.mark.parametrize("labels, n_classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse(tmp_path, labels, n_classes):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        write_cifar_batch(folder / split, n, "fine_labels", 100, seed=n,
                          extra={b"coarse_labels": rng.integers(0, 20, n).tolist()})
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    ds = load_dataset("cifar100", DatasetRequest((tmp_path,), tmp_path / "c", False, options={"labels": labels}))
    assert ds.num_classes == n_classes and len(ds.train) == 30 and len(ds.test) == 10
    raw = load_pickle_batch((folder / "train").read_bytes())
    assert ds.train.labels.tolist() == list(raw[f"{labels}_labels"])


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    payload = pickle.dumps({b"data": Evil()})
    assert b"system" in payload
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_pickle_batch(payload)
    assert not (tmp_path / "pwned").exists()


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_idx_reader_and_mnist_loader(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8)}
    for i, (name, arr) in enumerate(arrays.items()):  # mix plain and gzipped files, as mirrors do
        if i % 2:
            (folder / (name + ".gz")).write_bytes(gzip.compress(_idx(arr)))
        else:
            (folder / name).write_bytes(_idx(arr))
    assert np.array_equal(read_idx(_idx(arrays["train-labels-idx1-ubyte"])), arrays["train-labels-idx1-ubyte"])
    ds = load_dataset("mnist", DatasetRequest((tmp_path,), tmp_path / "c", False))
    assert ds.train.images.shape == (12, 1, 28, 28)
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert ds.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    with pytest.raises(ValueError, match="magic"):
        read_idx(b"\x01\x02\x08\x01")


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_dataset("cifar10", DatasetRequest((tmp_path,), tmp_path / "c", False))


def test_missing_dataset_says_how_to_get_it_and_how_to_point_at_another_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as missing:
        load_dataset("cifar10", DatasetRequest((tmp_path,), tmp_path / "c", False))
    text = str(missing.value)
    assert "https://" in text and "data.download: true" in text and "data.root" in text and "SLIMLAB_DATA" in text
    # Asking to download a dataset that has no download address says so, instead of the same "not found".
    with pytest.raises(DataNotFoundError) as no_address:
        load_dataset("cifar10_jpeg", DatasetRequest((tmp_path,), tmp_path / "c", True))
    assert "cannot be downloaded" in str(no_address.value) and "data.download: true cannot help" in str(no_address.value)


def test_a_cifar_pickle_that_would_run_code_is_refused_in_one_line_naming_the_file(tmp_path, cifar10_dir):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (cifar10_dir / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(BadDataError) as refused:
        load_dataset("cifar10", DatasetRequest((tmp_path,), tmp_path / "c", False))
    assert isinstance(refused.value, SlimlabError)  # the CLI prints it as one line, without a traceback
    assert "data_batch_3" in str(refused.value) and "refusing to load posix.system" in str(refused.value)
    assert "\n" not in str(refused.value) and not (tmp_path / "pwned").exists()


def test_an_image_folder_with_one_class_is_refused(tmp_path):
    _write_pngs(tmp_path / "flat", ["cat"], 4)
    with pytest.raises(BadDataError, match="1 class \\(cat\\); a classifier needs at least two"):
        load_dataset("imagefolder", DatasetRequest((), tmp_path / "cache", False, path=tmp_path / "flat", options={"progress": False}))


def _write_pngs(root, classes, per_class):
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 20 * ci + i, dtype=np.uint8)).save(root / name / f"{i:03}.png")


@pytest.mark.parametrize("as_archive", [False, True])
def test_image_folder_decodes_once_into_a_cache(tmp_path, as_archive):
    root = tmp_path / "pets"
    _write_pngs(root / "train", ["cat", "dog"], 3)
    _write_pngs(root / "test", ["cat", "dog"], 2)
    source = make_tar(root, tmp_path / "pets.tar.gz") if as_archive else root
    req = DatasetRequest((), tmp_path / "cache", False, path=source, options={"progress": False})
    ds = load_dataset("imagefolder", req)
    assert ds.classes == ("cat", "dog") and len(ds.train) == 6 and len(ds.test) == 4
    assert ds.train.images.shape[1:] == (3, 8, 8)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.train.images[4, 0, 0, 0].item() == 21  # dog (class 1), image 1 -> pixel value 20*1+1
    cached = list((tmp_path / "cache").glob("imagefolder-*.pt"))
    assert len(cached) == 1
    again = load_dataset("imagefolder", req)  # from the cache this time
    assert torch.equal(again.train.images, ds.train.images)


def test_image_folder_statistics_are_computed_once(tmp_path, monkeypatch):
    import slimlab.data.imagefolder as imagefolder

    _write_pngs(tmp_path / "pets", ["cat", "dog"], 3)
    req = DatasetRequest((), tmp_path / "cache", False, path=tmp_path / "pets", options={"progress": False})
    first = load_dataset("imagefolder", req)
    assert first.mean[0] == pytest.approx(float(first.train.images[:, 0].double().mean()) / 255)

    def refuse(*a, **k):
        raise AssertionError("statistics computed again")

    monkeypatch.setattr(imagefolder, "channel_statistics", refuse)
    again = load_dataset("imagefolder", req)  # every run of a study loads its data: seconds each on 50k images
    assert (again.mean, again.std) == (first.mean, first.std)


def test_image_folder_skips_macos_metadata_and_names_an_unreadable_image(tmp_path):
    root = tmp_path / "pets"
    _write_pngs(root / "train", ["cat", "dog"], 2)
    _write_pngs(root / "test", ["cat", "dog"], 1)
    (root / "__MACOSX" / "train" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "train" / "cat" / "._1.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = load_dataset("imagefolder", DatasetRequest((), tmp_path / "cache", False, path=root, options={"progress": False}))
    assert ds.classes == ("cat", "dog") and len(ds.train) == 4
    (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataNotFoundError, match="train/dog/broken.png is not a readable image"):
        load_dataset("imagefolder", DatasetRequest((), tmp_path / "cache2", False, path=root, options={"progress": False}))


@pytest.mark.parametrize("stray", ["val/cat", "train/cat/extra"])
def test_image_folder_with_train_and_test_refuses_images_outside_them(tmp_path, stray):
    root = tmp_path / "pets"
    _write_pngs(root / "train", ["cat", "dog"], 2)
    _write_pngs(root / "test", ["cat", "dog"], 1)
    (root / stray).mkdir(parents=True, exist_ok=True)
    (root / stray / "odd.png").write_bytes((root / "train" / "cat" / "000.png").read_bytes())
    with pytest.raises(DataNotFoundError, match=f"{stray}/odd.png is outside train/CLASS/ and test/CLASS/"):
        load_dataset("imagefolder", DatasetRequest((), tmp_path / "cache", False, path=root, options={"progress": False}))


def test_a_validation_split_as_large_as_the_training_set_is_a_config_error():
    split = ImageSplit(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ConfigError, match="data.val_size=10 leaves no training images"):
        split_validation(split, 10, seed=0)


def test_image_folder_without_split_carves_a_fixed_test_set(tmp_path):
    _write_pngs(tmp_path / "flat", ["a", "b"], 10)
    req = DatasetRequest((), tmp_path / "cache", False, path=tmp_path / "flat", options={"progress": False, "test_fraction": 0.2})
    ds = load_dataset("imagefolder", req)
    assert len(ds.train) == 16 and len(ds.test) == 4


@pytest.mark.skipif(not JPEG_ARCHIVE.exists(), reason="the CIFAR-10 JPEG copy is not beside the repository")
def test_real_cifar10_jpeg_copy():
    ds = load_dataset("cifar10_jpeg", DatasetRequest((JPEG_ARCHIVE.parent,), __import__("pathlib").Path("~/.cache/slimlab").expanduser(), False, options={"progress": False}))
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert ds.train.labels.bincount().tolist() == [5000] * 10 and ds.test.labels.bincount().tolist() == [1000] * 10
    means = ds.train.images.float().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([125.3, 122.9, 113.9]), atol=3)  # the README's per-channel means


def test_validation_split_is_disjoint_and_seeded():
    split = ImageSplit(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).contiguous(), torch.arange(100))
    train, val = split_validation(split, 20, seed=3)
    assert len(train) == 80 and len(val) == 20
    assert not set(train.labels.tolist()) & set(val.labels.tolist())
    assert split_validation(split, 20, seed=3)[1].labels.tolist() == val.labels.tolist()
    assert split_validation(split, 20, seed=4)[1].labels.tolist() != val.labels.tolist()


def test_a_subset_of_class_sorted_data_is_balanced_random_and_the_same_every_time():
    labels = torch.arange(10).repeat_interleave(50)  # stored sorted by class, as the JPEG copy and image folders are
    split = ImageSplit(torch.arange(500).to(torch.uint8).view(500, 1, 1, 1), labels)
    subset = balanced_subset(split, 95, seed=0)
    counts = subset.labels.bincount(minlength=10)
    assert len(subset) == 95 and counts.max() - counts.min() <= 1  # 9 or 10 of each class, not 95 of the first
    assert torch.equal(subset.labels, subset.labels.sort().values)  # kept in stored order
    assert torch.equal(balanced_subset(split, 95, seed=0).images, subset.images)
    assert not torch.equal(balanced_subset(split, 95, seed=1).images, subset.images)
    uneven = ImageSplit(torch.zeros(30, 1, 1, 1, dtype=torch.uint8), torch.tensor([0] * 25 + [1] * 5))
    assert balanced_subset(uneven, 20).labels.bincount().tolist() == [15, 5]  # a short class gives all it has
    assert balanced_subset(split, 500) is split


def test_augmentation_is_a_crop_of_the_padded_image():
    images = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2,) * 4)
    for i in range(0, 64, 9):  # each output is some 8x8 window of its own padded image
        windows = padded[i].unfold(1, 8, 1).unfold(2, 8, 1)  # C, 5, 5, 8, 8
        assert any(torch.equal(windows[:, y, x], out[i]) for y in range(5) for x in range(5))
    flipped = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], images[i]) for i in range(64)]
    assert all(s or torch.equal(flipped[i], images[i].flip(2)) for i, s in enumerate(same)) and 10 < sum(same) < 54


def test_reflect_padding_crops_the_mirrored_image_with_the_same_draws():
    images = torch.randint(0, 255, (32, 3, 8, 8), dtype=torch.uint8)
    mirrored = torch.nn.functional.pad(images.float(), (3,) * 4, mode="reflect").to(torch.uint8)
    out = random_crop_flip(images, padding=3, flip=False, generator=torch.Generator().manual_seed(5), padding_mode="reflect")
    zeros = random_crop_flip(images, padding=3, flip=False, generator=torch.Generator().manual_seed(5))
    offsets = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 7, (32,), generator=offsets), torch.randint(0, 7, (32,), generator=offsets)
    for i in range(32):  # the same offsets as zero padding: only the border differs
        assert torch.equal(out[i], mirrored[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])
        rows, cols = dy[i] + torch.arange(8) - 3, dx[i] + torch.arange(8) - 3
        inside = ((rows >= 0) & (rows < 8))[:, None] & ((cols >= 0) & (cols < 8))[None, :]
        assert torch.equal(out[i][:, inside], zeros[i][:, inside])
    assert (out == 0).float().mean() < 0.05 < (zeros == 0).float().mean()  # no black border
    with pytest.raises(ConfigError, match="smaller than the images"):
        DeviceLoader(ImageSplit(images, torch.arange(32)), 8, (0.0,) * 3, (1.0,) * 3, crop_padding=8, padding_mode="reflect")


def test_alternating_flips_mirror_each_image_in_every_other_epoch():
    images = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    split = ImageSplit(images, torch.arange(40))
    loader = DeviceLoader(split, 8, (0.0,) * 3, (1 / 255,) * 3, shuffle=True, augment=True, crop_padding=0, alternate_flips=True)
    seen = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        by_label = {}
        for x, y in loader:
            by_label.update({int(label): x[i].round().to(torch.uint8) for i, label in enumerate(y)})
        seen.append([torch.equal(by_label[i], images[i].flip(2)) for i in range(40)])
    assert 10 < sum(seen[0]) < 30  # the first epoch's phases are random
    assert seen[1] == [not f for f in seen[0]] and seen[2] == seen[0]


def test_an_epoch_without_crop_shows_whole_images():
    images = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    loader = DeviceLoader(ImageSplit(images, torch.arange(16)), 16, (0.0,) * 3, (1 / 255,) * 3, shuffle=True, augment=True)
    loader.set_epoch(3, crop=False)
    x, y = next(iter(loader))
    x = x.round().to(torch.uint8)
    assert all(torch.equal(x[i], images[label]) or torch.equal(x[i], images[label].flip(2)) for i, label in enumerate(y))
    loader.set_epoch(4)
    x, y = next(iter(loader))
    assert not all(torch.equal(x[i].round().to(torch.uint8), images[label]) for i, label in enumerate(y))


def test_data_order_is_a_function_of_the_seed():
    split = ImageSplit(torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40))
    make = lambda seed: DeviceLoader(split, 8, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment=True, seed=seed)
    first = [y.tolist() for _, y in make(1)]
    assert first == [y.tolist() for _, y in make(1)]
    assert first != [y.tolist() for _, y in make(2)]
    loader = make(1)
    loader.set_epoch(1)
    assert [y.tolist() for _, y in loader] != first  # a new order each epoch


def test_channel_statistics_in_chunks_match_the_whole_set():
    from slimlab.data.imagefolder import channel_statistics

    images = torch.randint(0, 256, (300, 3, 4, 4), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    mean, std = channel_statistics(images, chunk=37)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), images.double().mean(dim=(0, 2, 3)) / 255, atol=1e-9)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), images.double().std(dim=(0, 2, 3)) / 255, atol=1e-9)
