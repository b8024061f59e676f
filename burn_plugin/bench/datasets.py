"""BackdoorBench's datasets: names, shapes, class counts, on-disk layouts and transforms.

Raw datasets yield ``(PIL.Image, int)`` and expose ``.targets`` like torchvision's. Layouts are
BackdoorBench's (``<root>/data/<name>/...``, interface.md section 3.2); ``fashionmnist`` is added as
the embedded default and is also found where Debian's ``dataset-fashion-mnist`` package puts it.

Transforms are BackdoorBench's (``Resize -> RandomCrop(pad 4) -> [HFlip, cifar10 only] -> ToTensor
-> Normalize`` for training; ``Resize -> ToTensor -> Normalize`` for testing), with one addition:
grayscale images are converted to 3 channels (every model has a 3-channel stem; BackdoorBench's own
mnist path breaks there, interface.md 3.4).

For speed, :func:`to_uint8_tensor` materialises a dataset as one ``uint8`` tensor ``(N, 3, H, W)``
(the test transform without ``ToTensor``/``Normalize``); the rest of the plugin augments and
normalises on tensors (:mod:`burn_plugin.core.augment`).
"""
from __future__ import annotations

import csv
import random
import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import BadInputError, BurnError, DataNotFoundError, EmptySelectionError
from ..fileio import load_pickle_bytes
from ..registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetSpec:
    """What BackdoorBench knows about a dataset (``get_num_classes``, ``get_input_shape``, Normalize)."""

    name: str
    num_classes: int
    height: int
    width: int
    channels: int  # channels of the raw images (BackdoorBench's img_size[2]); models always see 3
    mean: tuple
    std: tuple
    hflip: bool
    layout: str
    how_to_get: str
    loader: Callable = field(repr=False, compare=False, default=None)
    train_size: int = 0          # training images in the full split
    default_epochs: int = 100    # `burn attack`'s epochs: BackdoorBench's prototype value (CPU-sized for 28x28)
    #: BackdoorBench knows the dataset by this name (None: not a BackdoorBench dataset, e.g. fashionmnist)
    bb_name: str | None = None
    #: the files BackdoorBench reads under ``<root>/data/<name>/``, as alternative sets (``dir/`` = a folder)
    bb_files: tuple = ()
    #: BackdoorBench ships a ``config/defense/<defense>/<name>.yaml`` for it (else cifar10.yaml is used)
    bb_defense_yaml: bool = False

    @property
    def img_size(self) -> tuple:
        """BackdoorBench's ``(H, W, C)``."""
        return (self.height, self.width, self.channels)

    @property
    def mean3(self) -> tuple:
        return tuple(self.mean) * 3 if len(self.mean) == 1 else tuple(self.mean)

    @property
    def std3(self) -> tuple:
        return tuple(self.std) * 3 if len(self.std) == 1 else tuple(self.std)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
_SPECS = DATASETS.entries


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name, spec)


def list_datasets() -> list[str]:
    return DATASETS.names()


def backdoorbench_datasets() -> list[str]:
    """Every dataset name BackdoorBench's own defenses accept: those of these specs, and the ones it
    knows that the plugin does not load (:data:`BACKDOORBENCH_ONLY`)."""
    return [s.bb_name for s in _SPECS.values() if s.bb_name] + list(BACKDOORBENCH_ONLY)


def known_dataset(name) -> bool:
    """True if ``name`` is a dataset name this plugin or BackdoorBench knows; a name read from a record
    must pass this before it forms a path (a YAML file, a data folder)."""
    return isinstance(name, str) and (name in _SPECS or name in backdoorbench_datasets())


def get_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


# ------------------------------------------------------------------------------------------------
# raw datasets

class ArrayImageDataset(torch.utils.data.Dataset):
    """Images held as one uint8 array ``(N, H, W)`` or ``(N, H, W, C)``; yields ``(PIL, int)``."""

    def __init__(self, data: np.ndarray, targets: Sequence[int]):
        self.data = np.asarray(data, dtype=np.uint8)
        self.targets = [int(t) for t in targets]
        if len(self.data) != len(self.targets):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return Image.fromarray(self.data[i]), self.targets[i]


class FileImageDataset(torch.utils.data.Dataset):
    """Images as files (``paths``) with integer labels; yields ``(PIL RGB, int)`` (GTSRB, Tiny val)."""

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Sequence[int]):
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]

    @property
    def labels(self):  # GTSRB-style attribute name BackdoorBench uses
        return self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB"), self.targets[i]
        except (OSError, ValueError, SyntaxError) as exc:  # missing, unreadable or not an image
            raise DataNotFoundError(f"dataset image {self.paths[i]} cannot be read ({type(exc).__name__}); "
                                    f"re-install the data") from None


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): MNIST/Fashion-MNIST's format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise DataNotFoundError(f"{path} is not a uint8 idx file; re-install the data")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise DataNotFoundError(f"{path} is truncated or corrupt (header says {shape}); re-install the data")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_IDX_NAMES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_pair(folder: Path, train: bool) -> tuple[Path, Path] | None:
    """The images and labels files (each plain or gzipped) of a split in ``folder``; None if one is missing."""
    pair = tuple(next((c for c in (folder / stem, folder / f"{stem}.gz") if c.is_file()), None)
                 for stem in _IDX_NAMES[train])
    return None if None in pair else pair


def _load_idx_dataset(folders: Sequence[Path], train: bool, name: str) -> ArrayImageDataset:
    for folder in folders:
        pair = _idx_pair(folder, train)
        if pair:
            images, labels = _read_idx(pair[0]), _read_idx(pair[1])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataNotFoundError(f"{pair[0]} ({images.shape}) and {pair[1]} ({labels.shape}) do not "
                                        f"match; re-install the data")
            return ArrayImageDataset(images, labels.astype(np.int64))
    spec = get_spec(name)
    raise DataNotFoundError(f"{name} data not found; searched {', '.join(str(f) for f in folders)}; "
                            f"{spec.how_to_get}")


def _load_fashionmnist(root: Path | None, train: bool):
    folders = [root / "FashionMNIST" / "raw", root] if root is not None else []
    return _load_idx_dataset(folders + [DEBIAN_FASHION_MNIST], train, "fashionmnist")


#: set to 1 to accept CIFAR batch files whose md5 differs from torchvision's (synthetic or re-packed
#: copies): a warning instead of the error. They are read by the allow-list unpickler either way.
UNVERIFIED_DATA_ENV = "BURN_UNVERIFIED_DATA"


def _load_cifar(root: Path, train: bool, hundred: bool):
    """The batch files of torchvision's CIFAR layout, each checked against torchvision's md5 and read
    with the allow-list unpickler (arrays and lists only: a batch file can run no code)."""
    import logging

    import torchvision
    from torchvision.datasets.utils import check_integrity

    base = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
    name = "cifar100" if hundred else "cifar10"
    folder = root / base.base_folder
    data, targets = [], []
    for fname, md5 in (base.train_list if train else base.test_list):
        path = folder / fname
        if not path.is_file():
            raise DataNotFoundError(f"{name} data not found: {path} is missing; {get_spec(name).how_to_get}")
        if not check_integrity(str(path), md5):
            if os.environ.get(UNVERIFIED_DATA_ENV) != "1":
                raise DataNotFoundError(f"{name} file {path} differs from torchvision's copy (md5); "
                                        f"{get_spec(name).how_to_get} again (or set {UNVERIFIED_DATA_ENV}=1 for a "
                                        f"copy you made yourself)")
            logging.getLogger("burn").warning("%s: md5 differs from torchvision's (%s=1)", path, UNVERIFIED_DATA_ENV)
        try:
            entry = load_pickle_bytes(path.read_bytes(), encoding="latin1")
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = entry["fine_labels" if hundred else "labels"]
        except (BurnError, OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataNotFoundError(f"{name} file {path} cannot be read ({type(exc).__name__}: {exc}); "
                                    f"{get_spec(name).how_to_get} again") from None
        except Exception as exc:  # noqa: BLE001 - whatever a damaged pickle makes the unpickler raise
            raise DataNotFoundError(f"{name} file {path} cannot be read ({type(exc).__name__}); "
                                    f"{get_spec(name).how_to_get} again") from None
        data.append(x)
        targets.extend(int(v) for v in y)
    return ArrayImageDataset(np.concatenate(data), targets)


def _load_gtsrb(root: Path, train: bool):
    paths, labels = [], []
    if train:
        base = root / "Train"
        if not base.is_dir():
            raise DataNotFoundError(f"gtsrb data not found: {base} is missing; {get_spec('gtsrb').how_to_get}")
        for cls_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            gt = cls_dir / f"GT-{cls_dir.name}.csv"
            if not gt.is_file():
                raise DataNotFoundError(f"gtsrb annotation {gt} is missing; {get_spec('gtsrb').how_to_get}")
            _read_gt(gt, cls_dir, paths, labels)
    else:
        gt = root / "Test" / "GT-final_test.csv"
        if not gt.is_file():
            raise DataNotFoundError(f"gtsrb data not found: {gt} is missing; {get_spec('gtsrb').how_to_get}")
        _read_gt(gt, root / "Test", paths, labels)
    return FileImageDataset(paths, labels)


def _read_gt(gt: Path, folder: Path, paths: list, labels: list) -> None:
    with open(gt, newline="") as fh:
        rows = csv.reader(fh, delimiter=";")
        next(rows, None)  # header
        for n, row in enumerate(rows, start=2):
            if row:
                try:
                    label = int(row[7])
                except (IndexError, ValueError):
                    raise DataNotFoundError(f"gtsrb annotation {gt} line {n} has no class id in column 8; "
                                            f"{get_spec('gtsrb').how_to_get}") from None
                paths.append(folder / row[0])
                labels.append(label)


def _load_tiny(root: Path, train: bool):
    base = root / "tiny-imagenet-200"
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise DataNotFoundError(f"tiny data not found: {train_dir} is missing; {get_spec('tiny').how_to_get}")
    train_set = _image_folder(train_dir)
    if train:
        return FileImageDataset([p for p, _ in train_set.samples], train_set.targets)
    val = base / "val"
    ann = val / "val_annotations.txt"
    if (val / "images").is_dir() and ann.is_file():
        # a manually unzipped copy: flat val/images + annotations; map wnids with train's classes
        paths, labels = [], []
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in train_set.class_to_idx:
                paths.append(val / "images" / parts[0])
                labels.append(train_set.class_to_idx[parts[1]])
        return FileImageDataset(paths, labels)
    if not val.is_dir():
        raise DataNotFoundError(f"tiny data not found: {val} is missing; {get_spec('tiny').how_to_get}")
    val_set = _image_folder(val)
    unknown = [c for c in val_set.class_to_idx if c not in train_set.class_to_idx]
    if unknown:
        raise DataNotFoundError(f"tiny: {val} has folders that are not training classes (e.g. {unknown[0]!r}); "
                                f"a flat val/images needs val/val_annotations.txt beside it")
    remap = {i: train_set.class_to_idx[c] for c, i in val_set.class_to_idx.items()}
    return FileImageDataset([p for p, _ in val_set.samples], [remap[t] for t in val_set.targets])


def _image_folder(folder: Path):
    import torchvision

    try:
        return torchvision.datasets.ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise DataNotFoundError(f"tiny data in {folder} are incomplete ({exc}); "
                                f"{get_spec('tiny').how_to_get}") from None


#: datasets BackdoorBench's defenses accept but the plugin has no loader for
BACKDOORBENCH_ONLY = ("celeba", "imagenet")
_MNIST_IDX = _IDX_NAMES[True] + _IDX_NAMES[False]

register_dataset(DatasetSpec(
    "mnist", 10, 28, 28, 1, (0.5,), (0.5,), False,
    layout="<root>/data/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    how_to_get="place the four MNIST idx files in MNIST/raw/ (Fashion-MNIST's idx files also work there)",
    loader=lambda root, train: _load_idx_dataset([root / "MNIST" / "raw"], train, "mnist"),
    train_size=60_000, default_epochs=5, bb_name="mnist",
    bb_files=(tuple(f"MNIST/raw/{f}" for f in _MNIST_IDX), ("MNIST/processed/training.pt", "MNIST/processed/test.pt"))))
register_dataset(DatasetSpec(
    "fashionmnist", 10, 28, 28, 1, (0.2860,), (0.3530,), False,
    layout="<root>/data/fashionmnist/FashionMNIST/raw/ or /usr/share/datasets/fashion-mnist/",
    how_to_get="install it with `apt-get install dataset-fashion-mnist` (or place the idx files in FashionMNIST/raw/)",
    loader=_load_fashionmnist, train_size=60_000, default_epochs=5))
register_dataset(DatasetSpec(
    "cifar10", 10, 32, 32, 3, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), True,
    layout="<root>/data/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch}",
    how_to_get="extract cifar-10-python.tar.gz there",
    loader=lambda root, train: _load_cifar(root, train, False), train_size=50_000, default_epochs=100,
    bb_name="cifar10", bb_defense_yaml=True,
    bb_files=(tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)) + ("cifar-10-batches-py/test_batch",),)))
register_dataset(DatasetSpec(
    "cifar100", 100, 32, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False,
    layout="<root>/data/cifar100/cifar-100-python/{train,test}",
    how_to_get="extract cifar-100-python.tar.gz there",
    loader=lambda root, train: _load_cifar(root, train, True), train_size=50_000, default_epochs=100,
    bb_name="cifar100", bb_defense_yaml=True, bb_files=(("cifar-100-python/train", "cifar-100-python/test"),)))
register_dataset(DatasetSpec(
    "gtsrb", 43, 32, 32, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False,
    layout="<root>/data/gtsrb/Train/000NN/{*.ppm,GT-000NN.csv}, <root>/data/gtsrb/Test/{*.ppm,GT-final_test.csv}",
    how_to_get="run BackdoorBench's sh/gtsrb_download.sh or lay the files out as it does",
    loader=_load_gtsrb, train_size=39_209, default_epochs=50, bb_name="gtsrb", bb_defense_yaml=True,
    bb_files=(("Train/", "Test/", "Test/GT-final_test.csv"),)))
register_dataset(DatasetSpec(
    "tiny", 200, 64, 64, 3, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), False,
    layout="<root>/data/tiny/tiny-imagenet-200/{train,val}/...",
    how_to_get="unzip tiny-imagenet-200.zip there",
    loader=_load_tiny, train_size=100_000, default_epochs=200, bb_name="tiny", bb_defense_yaml=True,
    bb_files=(("tiny-imagenet-200/train/", "tiny-imagenet-200/val/"),)))


def load_raw(name: str, root: str | os.PathLike | None, train: bool):
    """The raw split of dataset ``name`` found at ``root`` (``<R>/data/<name>``)."""
    spec = get_spec(name)
    root_path = Path(root) if root is not None else None
    if root_path is None and name != "fashionmnist":
        raise DataNotFoundError(f"no data folder given for {name}; expected {spec.layout}")
    return spec.loader(root_path, train)


# ------------------------------------------------------------------------------------------------
# transforms (BackdoorBench's, PIL-based) and the fast uint8 tensor path

def get_transform(spec: DatasetSpec, train: bool):
    import torchvision.transforms as T

    steps: list = [T.Resize((spec.height, spec.width))]
    if train:
        steps.append(T.RandomCrop((spec.height, spec.width), padding=4))
        if spec.hflip:
            steps.append(T.RandomHorizontalFlip())
    steps += [T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(spec.mean3, spec.std3)]
    return T.Compose(steps)


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def pil_to_uint8(img: Image.Image, spec: DatasetSpec) -> np.ndarray:
    """The test transform up to ``ToTensor`` (resize, RGB), as a ``(3, H, W)`` uint8 array."""
    if img.size != (spec.width, spec.height):
        import torchvision.transforms.functional as TF

        img = TF.resize(img, [spec.height, spec.width])
    return np.array(_to_rgb(img), dtype=np.uint8).transpose(2, 0, 1)  # a writable copy


def to_uint8_tensor(raw, spec: DatasetSpec, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Materialise raw images (all, or ``indices``) as one ``uint8`` tensor ``(N, 3, H, W)``."""
    idx = range(len(raw)) if indices is None else indices
    data = getattr(raw, "data", None)
    if isinstance(data, np.ndarray) and data.shape[1:3] == (spec.height, spec.width):
        arr = data[np.asarray(list(idx), dtype=np.int64)] if indices is not None else data
        arr = np.repeat(arr[:, None], 3, axis=1) if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(arr))
    out = np.empty((len(idx), 3, spec.height, spec.width), dtype=np.uint8)
    for j, i in enumerate(idx):
        out[j] = pil_to_uint8(raw[i][0], spec)
    return torch.from_numpy(out)


def index_text(idx) -> str:
    """A clean-index file's text as BackdoorBench writes and reads it: one integer per line."""
    return "".join(f"{int(i)}\n" for i in idx)


def choose_clean_index(n: int, ratio: float, seed: int, index_file: str = "") -> np.ndarray:
    """BackdoorBench's ``choose_index``: the integers in ``index_file`` (one per line), else
    ``random.sample(range(n), int(n * ratio))`` with Python's ``random`` seeded by ``seed`` (a private
    ``random.Random(seed)`` draws the same sample without touching the global state)."""
    if index_file:
        p = Path(index_file).expanduser()
        if not p.is_file():
            raise BadInputError(f"clean index file not found: {p} (check --index; it lists clean_train indices, "
                                f"one per line)")
        try:
            idx = np.loadtxt(p, dtype=np.int64, ndmin=1)
        except ValueError:
            raise BadInputError(f"{p} must hold one integer index per line (check --index)") from None
        if len(idx) == 0:
            raise EmptySelectionError(f"{p} lists no index; a defense needs a few clean samples")
        if idx.min() < 0 or idx.max() >= n:
            raise BadInputError(f"{p} has indices outside 0..{n - 1} (clean_train has {n} samples); was it "
                                f"written for another dataset?")
        return idx
    k = int(n * ratio)
    if k <= 0:
        raise EmptySelectionError(f"ratio {ratio} of {n} clean training samples is 0 samples; raise --ratio "
                                  f"or pass --index")
    return np.asarray(random.Random(seed).sample(range(n), k), dtype=np.int64)
