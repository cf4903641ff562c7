"""CIFAR pickles, image folders, transforms and the train/val split."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vidcsl.data.images import (
    ImageDataset,
    eval_transform,
    load_cifar,
    load_image_folder,
    simclr_transform,
    split_train_val,
    supervised_transform,
    to_image_tensor,
)


def _write_batch(path, data, labels, label_key=b"labels"):
    """Exactly the official layout: bytes keys, uint8 (N, 3072) rows, python-2 compatible pickle."""
    batch = {b"batch_label": b"test", b"data": data, label_key: list(map(int, labels)),
             b"filenames": [b"x.png"] * len(labels)}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [99] * len(labels)  # must not be used
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3)
        _write_batch(d / name, data, labels)
        batches[name] = (data, labels)
    return tmp_path, batches


def test_cifar10_pixels_and_labels(cifar10_root):
    root, batches = cifar10_root
    x, y = load_cifar(root, "cifar10", train=True)
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    expected_labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(y, expected_labels)
    rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    for n, h, w, c in [(0, 0, 0, 0), (4, 5, 31, 2), (14, 31, 7, 1), (7, 16, 16, 1)]:
        assert x[n, h, w, c] == rows[n, c * 1024 + h * 32 + w]  # the documented channel-major row layout
    xt, yt = load_cifar(root, "cifar10", train=False)
    assert xt.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(yt, batches["test_batch"][1])


def test_cifar100_uses_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    _write_batch(d / "train", data, [42, 7], label_key=b"fine_labels")
    x, y = load_cifar(tmp_path, "cifar100")
    assert y.tolist() == [42, 7]
    assert x[1, 0, 1, 2] == data[1, 2 * 1024 + 1]


def test_cifar_missing_and_corrupt(cifar10_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar(empty, "cifar10")
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(root, "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar(root, "cifar10")
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar(root, "cifar1000")


def test_cifar_wrong_content_names_file(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _write_batch(d / "test_batch", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar(tmp_path, train=False)


def test_image_folder_and_lazy_dataset(tmp_path):
    rng = np.random.default_rng(1)
    written = {}
    for cls, names in {"cat": ["a.png", "b.png"], "ant": ["c.png"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / n)
            written[(cls, n)] = arr
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    folder = load_image_folder(tmp_path)
    assert folder.classes == ["ant", "cat"]
    assert folder.labels.tolist() == [0, 1, 1]
    arrays = folder.load_arrays()
    np.testing.assert_array_equal(arrays[1], written[("cat", "a.png")])
    ds = ImageDataset(folder.paths, folder.labels, transform=None)
    x, label = ds[2]
    assert label == 1 and x.dtype == torch.float32 and x.shape == (3, 8, 8)
    torch.testing.assert_close(x, torch.from_numpy(written[("cat", "b.png")]).permute(2, 0, 1).float() / 255)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")


def test_dataset_validates_input():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.float32), [0, 1], transform=None)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 1, 2], transform=None)


def _image(seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_simclr_transform_range_shape_and_two_views():
    torch.manual_seed(0)
    ds = ImageDataset(np.stack([_image(0), _image(1)]), [3, 4], transform=simclr_transform(24, blur=True),
                      two_views=True)
    (v1, v2), label = ds[0]
    assert label == 3
    for v in (v1, v2):
        assert v.shape == (3, 24, 24) and v.dtype == torch.float32
        assert v.min() >= 0 and v.max() <= 1
    assert not torch.allclose(v1, v2)  # independent draws of the augmentation
    torch.manual_seed(5)
    a = simclr_transform(24)(_image(0))
    torch.manual_seed(5)
    b = simclr_transform(24)(_image(0))
    torch.testing.assert_close(a, b)  # randomness comes only from torch's seed


def test_eval_transform_is_exact_and_layout_agnostic():
    img = _image(2)
    expected = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(eval_transform(32)(img), expected)
    torch.testing.assert_close(eval_transform(32)(torch.from_numpy(img).permute(2, 0, 1)), expected)
    torch.testing.assert_close(eval_transform(32)(torch.from_numpy(img)), expected)
    assert eval_transform(16)(img).shape == (3, 16, 16)


def test_supervised_transform_is_a_padded_crop_maybe_flipped():
    img = _image(3)
    ref = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    padded = torch.nn.functional.pad(ref, (4, 4, 4, 4))
    for seed in range(4):
        torch.manual_seed(seed)
        out = supervised_transform(32)(img)
        found = any(torch.allclose(out, cand[:, i:i + 32, j:j + 32])
                    for cand in (padded, padded.flip(-1)) for i in range(9) for j in range(9))
        assert found


def test_split_train_val():
    tr, va = split_train_val(100, 0.2, seed=0)
    assert len(va) == 20 and len(tr) == 80
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
    tr2, va2 = split_train_val(100, 0.2, seed=0)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, split_train_val(100, 0.2, seed=1)[1])
    assert len(split_train_val(10, 0.0, 0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(10, 1.5, 0)


def test_views_depend_on_seed_epoch_index_only_not_on_workers():
    """Augmentations are seeded per item, so resuming (or changing num_workers) replays the same views."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    ds = ImageDataset(imgs, np.arange(6), transform=simclr_transform(16), two_views=True, seed=3)

    def epoch_views(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers)
        return torch.cat([torch.cat(views) for views, _ in loader])

    torch.manual_seed(123)  # the global RNG must not matter
    first = epoch_views(0)
    torch.manual_seed(456)
    assert torch.equal(first, epoch_views(0))
    assert torch.equal(first, epoch_views(2))
    (a, b), _ = ds[0]
    assert not torch.equal(a, b)  # the two views of an item still differ
    ds.set_epoch(1)
    assert not torch.equal(first, epoch_views(0))


def _torchvision_simclr(size, strength=1.0, blur=False, scale=(0.2, 1.0)):
    """The specification of simclr_transform: SimCLR's augmentation as a torchvision v2 pipeline."""
    from torchvision.transforms import v2

    s = strength
    ops = [v2.Lambda(to_image_tensor), v2.RandomResizedCrop(size, scale=scale, antialias=True),
           v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, min(0.1 * s, 0.5))],
                                                     p=0.8), v2.RandomGrayscale(p=0.2)]
    if blur:
        ops.append(v2.RandomApply([v2.GaussianBlur(max(3, int(0.1 * size) // 2 * 2 + 1), sigma=(0.1, 2.0))], p=0.5))
    return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


@pytest.mark.parametrize("source, size, strength, blur", [((32, 32), 16, 1.0, False), ((20, 23), 15, 2.0, True),
                                                          ((37, 30), 17, 0.5, True), ((8, 8), 16, 0.0, False)])
def test_batched_simclr_views_are_the_torchvision_pipelines_views(source, size, strength, blur):
    """Same random numbers, same float operations: a batch gives bit-identical views to the v2 pipeline run on
    each image under the item's seed (so the augmentation distribution is exactly torchvision's)."""
    rng = np.random.default_rng(sum(source) + size)
    imgs = rng.integers(0, 256, size=(24, *source, 3), dtype=np.uint8)
    ds = ImageDataset(imgs, np.arange(24), transform=simclr_transform(size, strength, blur=blur), two_views=True,
                      seed=3)
    ds.set_epoch(2)
    reference = _torchvision_simclr(size, strength, blur)
    batch = ds.__getitems__(range(24))
    for i, ((a, b), label) in enumerate(batch):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(ds._seed(i))  # what torch.manual_seed does on a CPU
            expected = reference(imgs[i]), reference(imgs[i])
        assert label == i and torch.equal(a, expected[0]) and torch.equal(b, expected[1]), f"image {i}"
    (a, b), _ = ds[7]  # one at a time: the same views
    assert torch.equal(a, batch[7][0][0]) and torch.equal(b, batch[7][0][1])
    torch.manual_seed(11)  # called without a generator, it draws from torch's global RNG like the pipeline
    view = simclr_transform(size, strength, blur=blur)(imgs[0])
    torch.manual_seed(11)
    assert torch.equal(view, reference(imgs[0]))


def test_batched_eval_transform_equals_torchvision_per_image():
    from torchvision.transforms import v2

    rng = np.random.default_rng(5)
    for shape, size in (((32, 32), 16), ((20, 27), 15), ((16, 16), 16)):
        imgs = rng.integers(0, 256, size=(9, *shape, 3), dtype=np.uint8)
        reference = v2.Compose([v2.Lambda(to_image_tensor), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                                v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])
        ds = ImageDataset(imgs, np.zeros(9), transform=eval_transform(size))
        for i, (x, _) in enumerate(ds.__getitems__(list(range(9)))):
            assert torch.equal(x, reference(imgs[i]))
    plain = ImageDataset(imgs, np.zeros(9), transform=None)[4][0]  # no transform: the pixels as floats
    as_float = v2.Compose([v2.Lambda(to_image_tensor), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])
    assert torch.equal(plain, as_float(imgs[4]))


def test_other_transforms_are_seeded_per_item_and_leave_the_global_rng_alone():
    imgs = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    ds = ImageDataset(imgs, np.arange(4), transform=supervised_transform(32), seed=2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = torch.stack([x for x, _ in ds.__getitems__([0, 1, 2, 3])])
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    assert torch.equal(first, torch.stack([ds[i][0] for i in range(4)]))


@pytest.mark.parametrize("workers", [0, 1])
def test_workers_kept_across_epochs_draw_each_epochs_views(workers):
    """persistent_workers: the epoch set in the main process reaches workers started in an earlier epoch."""
    imgs = np.random.default_rng(2).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    ds = ImageDataset(imgs, np.arange(8), transform=simclr_transform(16), seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got = torch.cat([x for x, _ in loader])
        fresh = ImageDataset(imgs, np.arange(8), transform=simclr_transform(16), seed=4)
        fresh.set_epoch(epoch)
        assert torch.equal(got, torch.stack([fresh[i][0] for i in range(8)])), f"epoch {epoch}"
