"""Shared fixtures: BackdoorBench record folders built *by hand* from interface.md 2.1-2.5.

Nothing here uses the plugin's own writers (``save_record``, ``write_poisoned_split``, ``make_state``):
the point is to check the loader against the specification, not against itself. The clean data are
the synthetic MNIST layout of ``tests/synthetic.py`` (40 train / 20 test images, 28x28 grayscale).
"""
from __future__ import annotations

import io
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

# the user's folder (boundary cache, marks of started runs) for this test session only, inherited by
# every subprocess the tests start: never the tester's own ~/.cache/burn-plugin; removed when the session ends
if "BURN_HOME" not in os.environ or not os.environ.get("BURN_TEST_KEEP_HOME"):
    import atexit
    import shutil
    import tempfile

    os.environ["BURN_HOME"] = tempfile.mkdtemp(prefix="burn-home-")
    atexit.register(shutil.rmtree, os.environ["BURN_HOME"], ignore_errors=True)   # no folder left behind
# the synthetic CIFAR batch files of tests/synthetic.py cannot match torchvision's md5 (a test unsets this)
os.environ["BURN_UNVERIFIED_DATA"] = "1"

from synthetic import class_images, make_mnist_layout  # noqa: E402

N_TRAIN, N_TEST = 40, 20
TARGET = 0
# drawn from all classes (interface.md 2.4); some of them may be target-class samples
TRAIN_POISON = (0, 3, 7, 12, 21, 33)


def mnist_arrays(seed: int = 0):
    """The exact images/labels ``make_mnist_layout(seed=seed)`` writes (train, then test)."""
    xtr, ytr = class_images(N_TRAIN, 28, 28, 1, 10, seed)
    xte, yte = class_images(N_TEST, 28, 28, 1, 10, seed + 1)
    return xtr, ytr, xte, yte


def poisoned_image(arr: np.ndarray, idx: int) -> np.ndarray:
    """A poisoned copy that can be told apart from the clean image and from every other sample."""
    out = 255 - arr
    out[-3:, -3:] = 255
    out[0, 0] = idx % 256
    out[0, 1] = 7
    return out.astype(np.uint8)


def burn_problem(n: int, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
    """(an untrained smallresnet of 4 classes, ``BurnData`` of ``n`` 12x12 colour images): the small
    problem the core-loop tests run BURN on."""
    from burn_plugin.bench.models import build_model
    from burn_plugin.core.burn import BurnData

    x, y = class_images(n, 12, 12, 3, 4, seed=3)
    torch.manual_seed(0)
    model = build_model("smallresnet", 4)
    return model, BurnData(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y), mean, std)


def small_state_dict(num_classes: int = 10) -> dict:
    from burn_plugin.bench.models import build_model

    torch.manual_seed(0)
    return build_model("smallresnet", num_classes).state_dict()


@dataclass
class HandRecord:
    root: Path          # <R>, the folder that contains record/ (and data/)
    folder: Path        # <R>/record/<name>
    name: str
    mode: str
    xtr: np.ndarray
    ytr: np.ndarray
    xte: np.ndarray
    yte: np.ndarray
    train_poison: list
    test_poison: list
    bd_train_images: dict = field(default_factory=dict)
    bd_test_images: dict = field(default_factory=dict)
    obj: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"HandRecord({self.folder}, {self.mode})"

    def _repr_pretty_(self, p, cycle):  # keeps hypothesis' falsifying-example reports short
        p.text(repr(self))

    @property
    def pt(self) -> Path:
        return self.folder / "attack_result.pt"


def build_hand_record(root: Path, name: str = "badnet_hand", *, mode: str = "disk", with_data: bool = True,
                      data_path: str = "./data/mnist", with_bd_train: bool = True, num_classes: int = 10,
                      info: dict | None = None, summary: bool = True, seed: int = 0) -> HandRecord:
    """A mnist BadNets-like all2one record (target 0) exactly in BackdoorBench's on-disk format."""
    root = Path(root)
    folder = root / "record" / name
    folder.mkdir(parents=True, exist_ok=True)
    if with_data:
        make_mnist_layout(root / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=seed)
    xtr, ytr, xte, yte = mnist_arrays(seed)
    train_poison = list(TRAIN_POISON)
    test_poison = [int(i) for i in np.flatnonzero(yte != TARGET)]  # all2one: only non-target originals
    rec = HandRecord(root, folder, name, mode, xtr, ytr, xte, yte, train_poison, test_poison)

    def split(split_dir, x, y, idx, numpy_labels):
        data_dict = {}
        images = {}
        for i in idx:
            img = poisoned_image(x[i], i)
            images[i] = img
            orig = int(y[i])
            bd, orig_v = (np.int64(TARGET), np.int64(orig)) if numpy_labels else (TARGET, orig)
            if mode == "disk":
                d = folder / split_dir / str(orig)
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(d / f"{i}.png")
                data_dict[np.int64(i)] = {"path": f"./record/{name}/{split_dir}/{orig}/{i}.png",
                                          "other_info": [bd, orig_v]}
            else:
                data_dict[np.int64(i)] = (Image.fromarray(img), bd, orig_v)
        return data_dict, images

    def state(data_dict, n, visible, flagged, split_dir):
        indicator = np.zeros(n, dtype=np.float64)
        indicator[list(flagged)] = 1.0
        sfp = f"./record/{name}/{split_dir}" if mode == "disk" else None
        return {
            "bd_data_container": {"save_folder_path": sfp, "data_dict": data_dict, "save_file_format": ".png"},
            "getitem_all": True,
            "getitem_all_switch": False,
            "original_index_array": np.asarray(visible, dtype=np.int64),
            "poison_indicator": indicator,
            "save_folder_path": sfp,
        }

    bd_train = None
    if with_bd_train:
        dd, rec.bd_train_images = split("bd_train_dataset", xtr, ytr, train_poison, False)
        bd_train = state(dd, N_TRAIN, np.arange(N_TRAIN), train_poison, "bd_train_dataset")
    dd, rec.bd_test_images = split("bd_test_dataset", xte, yte, test_poison, True)
    bd_test = state(dd, N_TEST, test_poison, test_poison, "bd_test_dataset")
    rec.obj = {
        "model_name": "smallresnet",
        "num_classes": num_classes,
        "model": small_state_dict(num_classes),
        "data_path": data_path,
        "img_size": (28, 28, 1),
        "clean_data": "mnist",
        "bd_train": bd_train,
        "bd_test": bd_test,
    }
    torch.save(rec.obj, rec.pt)
    settings = {"attack": "badnet", "attack_target": TARGET, "attack_label_trans": "all2one", "pratio": 0.15,
                "dataset": "mnist", "dataset_path": "./data/mnist", "save_path": f"./record/{name}",
                "epochs": 1, "lr": 0.01, "img_size": [28, 28, 1]}
    settings.update(info or {})
    torch.save(settings, folder / "info.pickle")
    if summary:
        import pandas as pd

        df = pd.DataFrame({"epoch": [0, 0, False], "test_acc": [0.91, 0.95, False], "test_asr": [0.97, 0.99, False],
                           "test_ra": [0.02, 0.5, False]}, index=["last", "valid_max", "exist_nan_value"])
        df.to_csv(folder / "attack_df_summary.csv")
    return rec


def rewrite_pickle_in_pt(path: Path, old: bytes, new: bytes) -> int:
    """Byte-replace ``old`` with ``new`` in the ``data.pkl`` of a zip ``.pt``; returns the count replaced."""
    src = zipfile.ZipFile(path)
    buf = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                count = data.count(old)
                data = data.replace(old, new)
            out.writestr(info.filename, data)
    src.close()
    Path(path).write_bytes(buf.getvalue())
    return count


#: the devices a device-taking test runs on: always the CPU, and CUDA where a GPU is present
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="no CUDA GPU here"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """``cpu``, and ``cuda`` where present (the same assertions on both)."""
    return request.param


@pytest.fixture
def hand_record(tmp_path):
    """A disk-mode hand-built record under ``tmp_path/BB``."""
    return build_hand_record(tmp_path / "BB")


@pytest.fixture
def hand_record_factory(tmp_path):
    def make(sub: str = "BB", **kwargs) -> HandRecord:
        return build_hand_record(tmp_path / sub, **kwargs)
    return make


@pytest.fixture(scope="session")
def attack_record(tmp_path_factory):
    """One real ``run_attack`` output (BadNets, synthetic mnist, 1 epoch), shared by read-only tests."""
    from burn_plugin.bench.attacks import AttackSettings, run_attack

    root = tmp_path_factory.mktemp("attackbb")
    make_mnist_layout(root / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    settings = AttackSettings(attack="badnet", dataset="mnist", model="smallresnet", pratio=0.1, attack_target=0,
                              epochs=1, batch_size=16, dataset_path=str(root / "data"), random_seed=3)
    folder = root / "record" / "badnet_attack"
    final = run_attack(settings, folder, progress=False)
    return {"root": root, "folder": folder, "settings": settings, "final": final}


@pytest.fixture(scope="session")
def trained_record(tmp_path_factory):
    """A real record made by ``run_attack`` (BadNets on synthetic mnist, 200 training images, 1 epoch):
    enough samples for BURN's percentages to select something."""
    from burn_plugin.bench.attacks import AttackSettings, run_attack

    root = tmp_path_factory.mktemp("trainedbb")
    make_mnist_layout(root / "data" / "mnist", n_train=200, n_test=40, seed=0)
    folder = root / "record" / "badnet_small"
    run_attack(AttackSettings(dataset="mnist", model="smallresnet", epochs=1, batch_size=32,
                              dataset_path=str(root / "data")), folder, progress=False)
    return folder
