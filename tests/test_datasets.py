"""Dataset loaders on synthetic BackdoorBench layouts (interface.md 3.1/3.2), transforms, missing data."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from burn_plugin.bench import datasets as D
from burn_plugin.errors import DataNotFoundError, UnknownNameError
from synthetic import (class_images, make_cifar_layout, make_gtsrb_layout, make_mnist_layout,
                       make_tiny_layout)


def test_specs_match_backdoorbench():
    expected = {"mnist": (10, (28, 28, 1)), "cifar10": (10, (32, 32, 3)), "cifar100": (100, (32, 32, 3)),
                "gtsrb": (43, (32, 32, 3)), "tiny": (200, (64, 64, 3)), "fashionmnist": (10, (28, 28, 1))}
    assert set(D.list_datasets()) == set(expected)
    for name, (k, size) in expected.items():
        s = D.get_spec(name)
        assert (s.num_classes, s.img_size) == (k, size)
        assert len(s.mean3) == len(s.std3) == 3
    assert D.get_spec("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert D.get_spec("cifar10").std == (0.247, 0.243, 0.261)
    assert D.get_spec("gtsrb").mean == (0.0, 0.0, 0.0) and D.get_spec("gtsrb").std == (1.0, 1.0, 1.0)
    assert D.get_spec("mnist").mean3 == (0.5, 0.5, 0.5)
    with pytest.raises(UnknownNameError, match="celeba"):
        D.get_spec("celeba")
    with pytest.raises(UnknownNameError):
        D.load_raw("nope", "/tmp", True)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_plain_and_gz(tmp_path, gz):
    root = make_mnist_layout(tmp_path / "mnist", n_train=30, n_test=12, seed=5, gz=gz)
    suffix = ".gz" if gz else ""
    assert (root / "MNIST" / "raw" / f"train-images-idx3-ubyte{suffix}").is_file()
    tr, te = D.load_raw("mnist", root, True), D.load_raw("mnist", root, False)
    xtr, ytr = class_images(30, 28, 28, 1, 10, 5)
    xte, yte = class_images(12, 28, 28, 1, 10, 6)
    assert (len(tr), len(te)) == (30, 12)
    assert tr.targets == ytr.tolist() and te.targets == yte.tolist()
    img, y = tr[4]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28) and isinstance(y, int)
    np.testing.assert_array_equal(np.asarray(img), xtr[4])
    np.testing.assert_array_equal(np.asarray(te[11][0]), xte[11])
    x = D.to_uint8_tensor(tr, D.get_spec("mnist"))
    assert x.shape == (30, 3, 28, 28) and x.dtype == torch.uint8
    for c in range(3):  # grayscale repeated on 3 channels
        np.testing.assert_array_equal(x[:, c].numpy(), xtr)
    sub = D.to_uint8_tensor(tr, D.get_spec("mnist"), [7, 2])
    np.testing.assert_array_equal(sub[:, 0].numpy(), xtr[[7, 2]])


def test_truncated_idx_file_is_a_data_error(tmp_path):
    root = make_mnist_layout(tmp_path / "mnist", n_train=10, n_test=10)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        D.load_raw("mnist", root, True)
    g = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = g.read_bytes()
    g.write_bytes(data[:4] + (11).to_bytes(4, "big") + data[8:] + b"\x01")  # 11 labels for 10 images
    with pytest.raises(DataNotFoundError):
        D.load_raw("mnist", root, False)


def test_cifar10(tmp_path):
    root = make_cifar_layout(tmp_path / "cifar10", n_train=25, n_test=10, seed=2)
    tr, te = D.load_raw("cifar10", root, True), D.load_raw("cifar10", root, False)
    xtr, ytr = class_images(25, 32, 32, 3, 10, 2)
    assert (len(tr), len(te)) == (25, 10)
    # data_batch_1..5 are concatenated in order
    assert tr.targets == ytr.tolist()
    img, y = tr[13]
    assert img.mode == "RGB" and img.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(img), xtr[13])
    x = D.to_uint8_tensor(te, D.get_spec("cifar10"))
    assert x.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(x[3].numpy(), np.asarray(te[3][0]).transpose(2, 0, 1))


def test_cifar100(tmp_path):
    root = make_cifar_layout(tmp_path / "cifar100", n_train=30, n_test=20, hundred=True, seed=4)
    tr, te = D.load_raw("cifar100", root, True), D.load_raw("cifar100", root, False)
    _, ytr = class_images(30, 32, 32, 3, 100, 4)
    assert (len(tr), len(te)) == (30, 20)
    assert tr.targets == ytr.tolist()
    assert max(tr.targets) < 100 and max(tr.targets) >= 10  # fine labels, not the 20 coarse ones


def test_gtsrb_variable_size_resized(tmp_path):
    root = make_gtsrb_layout(tmp_path / "gtsrb", per_class=2, n_test=50)
    tr, te = D.load_raw("gtsrb", root, True), D.load_raw("gtsrb", root, False)
    assert len(tr) == 43 * 2 and len(te) == 50
    assert sorted(set(tr.targets)) == list(range(43))
    assert tr.targets[:4] == [0, 0, 1, 1]
    assert te.labels == [j % 43 for j in range(50)]
    sizes = {tr[i][0].size for i in range(len(tr))}
    assert len(sizes) > 1  # really variable sizes on disk
    assert te[0][0].size == (33, 35) and te[0][0].mode == "RGB"
    spec = D.get_spec("gtsrb")
    x = D.to_uint8_tensor(tr, spec, [0, 5, 85])
    assert x.shape == (3, 3, 32, 32)
    resize = T.Compose([T.Resize((32, 32)), T.PILToTensor()])
    for j, i in enumerate([0, 5, 85]):
        assert torch.equal(x[j], resize(tr[i][0]))
    t = D.get_transform(spec, False)(te[1][0])
    assert t.shape == (3, 32, 32)


@pytest.mark.parametrize("flat_val", [True, False])
def test_tiny_val_layouts(tmp_path, flat_val):
    root = make_tiny_layout(tmp_path / "tiny", per_class=1, flat_val=flat_val)
    tr, te = D.load_raw("tiny", root, True), D.load_raw("tiny", root, False)
    assert len(tr) == 200 and sorted(set(tr.targets)) == list(range(200))
    assert len(te) == 20
    # val_j shows wnid n{199-j:08d}; labels must be train's class index for that wnid, whatever the layout
    for path, y in zip(te.paths, te.targets):
        j = int(os.path.basename(path)[len("val_"):-len(".JPEG")])
        assert y == 199 - j
    img, _ = te[0]
    assert img.mode == "RGB" and img.size == (64, 64)
    x = D.to_uint8_tensor(te, D.get_spec("tiny"), [0, 1])
    assert x.shape == (2, 3, 64, 64)


def test_transforms(tmp_path):
    for name in ("mnist", "cifar10", "cifar100", "gtsrb", "tiny", "fashionmnist"):
        spec = D.get_spec(name)
        train = D.get_transform(spec, True).transforms
        test = D.get_transform(spec, False).transforms
        kinds = [type(t).__name__ for t in train]
        crops = [t for t in train if isinstance(t, T.RandomCrop)]
        assert len(crops) == 1 and crops[0].padding == 4 and tuple(crops[0].size) == (spec.height, spec.width)
        assert ("RandomHorizontalFlip" in kinds) == (name == "cifar10")
        assert kinds.index("Resize") < kinds.index("RandomCrop") < kinds.index("ToTensor") < kinds.index("Normalize")
        assert not any(isinstance(t, (T.RandomCrop, T.RandomHorizontalFlip)) for t in test)
        assert isinstance(test[0], T.Resize) and isinstance(test[-1], T.Normalize)
        assert tuple(test[-1].mean) == spec.mean3 and tuple(test[-1].std) == spec.std3
    # grayscale becomes 3 channels; values are normalised
    spec = D.get_spec("mnist")
    img = Image.fromarray(np.full((28, 28), 255, np.uint8), mode="L")
    for train in (False, True):
        x = D.get_transform(spec, train)(img)
        assert x.shape == (3, 28, 28)
    x = D.get_transform(spec, False)(img)
    assert torch.allclose(x, torch.ones(3, 28, 28))  # (1 - 0.5) / 0.5
    # test transform resizes (tiny's 64x64 spec on a 32x32 image)
    assert D.get_transform(D.get_spec("tiny"), False)(Image.new("RGB", (32, 32))).shape == (3, 64, 64)
    # pil_to_uint8 = test transform before ToTensor
    arr = np.random.RandomState(0).randint(0, 256, (40, 36, 3)).astype(np.uint8)
    pil = Image.fromarray(arr)
    u8 = D.pil_to_uint8(pil, D.get_spec("cifar10"))
    ref = T.Compose(D.get_transform(D.get_spec("cifar10"), False).transforms[:-1])(pil)
    np.testing.assert_array_equal(u8, (ref * 255).round().to(torch.uint8).numpy())


def test_train_transform_random_crop_pads_with_zeros():
    spec = D.get_spec("gtsrb")  # mean 0, std 1: output = pixels / 255
    img = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))
    torch.manual_seed(0)
    outs = [D.get_transform(spec, True)(img) for _ in range(20)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any((o == 0).any() for o in outs)  # some crops reach into the 4-px zero padding


@pytest.mark.parametrize("name, how", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-python.tar.gz"),
                                       ("cifar100", "cifar-100-python.tar.gz"), ("gtsrb", "gtsrb_download.sh"),
                                       ("tiny", "tiny-imagenet-200.zip")])
def test_missing_data_names_path_and_remedy(tmp_path, name, how):
    root = tmp_path / "data" / name
    for train in (True, False):
        with pytest.raises(DataNotFoundError) as ei:
            D.load_raw(name, root, train)
        msg = str(ei.value)
        assert str(root) in msg and how in msg
    with pytest.raises(DataNotFoundError, match=name):
        D.load_raw(name, None, True)


def test_damaged_data_are_data_errors(tmp_path):
    """Present but broken data end in DataNotFoundError naming the file, not in a random exception."""
    tiny = make_tiny_layout(tmp_path / "tiny", per_class=1, n_classes=5)
    (tiny / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()  # flat val/images without annotations
    with pytest.raises(DataNotFoundError, match="val_annotations.txt"):
        D.load_raw("tiny", tiny, False)
    (tmp_path / "tiny2" / "tiny-imagenet-200" / "train").mkdir(parents=True)  # no class folders
    with pytest.raises(DataNotFoundError, match="train"):
        D.load_raw("tiny", tmp_path / "tiny2", True)

    cifar = make_cifar_layout(tmp_path / "cifar10", n_train=10, n_test=5)
    f = cifar / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataNotFoundError, match="cannot be read"):
        D.load_raw("cifar10", cifar, False)

    gtsrb = make_gtsrb_layout(tmp_path / "gtsrb", per_class=1, n_test=3)
    (gtsrb / "Test" / "00001.ppm").unlink()
    te = D.load_raw("gtsrb", gtsrb, False)
    te[0]
    with pytest.raises(DataNotFoundError, match="00001.ppm"):
        te[1]
    with pytest.raises(DataNotFoundError):
        D.to_uint8_tensor(te, D.get_spec("gtsrb"))
    (gtsrb / "Test" / "GT-final_test.csv").write_text("Filename;Width\n00000.ppm;33\n")
    with pytest.raises(DataNotFoundError, match="GT-final_test.csv line 2"):
        D.load_raw("gtsrb", gtsrb, False)


def test_fashionmnist_from_debian_package():
    if not (D.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    te = D.load_raw("fashionmnist", None, False)
    assert len(te) == 10000 and sorted(set(te.targets)) == list(range(10))
    assert te.data.shape == (10000, 28, 28) and te[0][0].mode == "L"
    # the same files placed as "mnist" load too (interface.md 3.3); only loading is exercised here
