"""BackdoorBench attack records (``record/<attack>/attack_result.pt``), read and written in its layout.

``attack_result.pt`` is a dict with exactly eight keys (interface.md 2.1): ``model_name``,
``num_classes``, ``model`` (state dict), ``data_path`` (e.g. ``./data/cifar10``), ``img_size``
(``(H, W, C)`` tuple), ``clean_data`` (dataset name), ``bd_train`` and ``bd_test`` (dataset states).
A dataset state holds ``bd_data_container`` (``{save_folder_path, data_dict, save_file_format}``),
``getitem_all``, ``getitem_all_switch``, ``original_index_array`` (int64 array of visible original
indices), ``poison_indicator`` (float array over the *full* split) and ``save_folder_path``.
``data_dict`` maps an original index (numpy int64) to the poisoned sample: in disk mode
``{"path": "<save_folder_path>/<orig_label>/<idx>.png", "other_info": [bd_label, orig_label]}``
with paths relative to the BackdoorBench root, in RAM mode ``(PIL.Image, bd_label, orig_label)``.

The clean data live at ``<R>/data/<dataset>`` where ``<R>`` is the folder that contains ``record/``.
:func:`load_record` gives one :class:`AttackRecord`; every dataset in it yields BackdoorBench's
5-tuple ``(img, label, original_index, poison_flag, original_label)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import (BadInputError, BurnError, CorruptFileError, RecordNotFoundError, ShapeMismatchError,
                      UnknownNameError)
from ..fileio import load_settings_file, save_torch, torch_load
from . import datasets as D
from .models import build_model, load_weights

RECORD_KEYS = ("model_name", "num_classes", "model", "data_path", "img_size", "clean_data", "bd_train", "bd_test")
STATE_KEYS = ("bd_data_container", "getitem_all", "getitem_all_switch", "original_index_array",
              "poison_indicator", "save_folder_path")
CONTAINER_KEYS = ("save_folder_path", "data_dict", "save_file_format")


# ------------------------------------------------------------------------------------------------
# poisoned samples

class PoisonContainer:
    """The poisoned samples of one split: original index -> (image, bd_label, original_label)."""

    #: largest side a stored poisoned PNG may declare: a record's images have its dataset's size (at
    #: most 64x64 for the registered datasets); 8x the largest registered side, at least 256, leaves
    #: room for any real record and refuses a decompression bomb from its header, before decoding
    @staticmethod
    def max_side() -> int:
        sides = [max(D.get_spec(n).height, D.get_spec(n).width) for n in D.list_datasets()]
        return max([256] + [8 * s for s in sides])

    def __init__(self, data_dict: dict, save_folder_path: str | None, resolve=None):
        self.data_dict = {_as_int(k, "a data_dict key"): _check_entry(k, v) for k, v in data_dict.items()}
        self.save_folder_path = save_folder_path
        self._resolve = resolve or (lambda p: Path(p))
        self._max_side = self.max_side()   # once, not per image: it walks the dataset registry

    def labels(self, idx: int) -> tuple[int, int]:
        v = self.data_dict[idx]
        if isinstance(v, dict):
            info = v["other_info"]
            return int(info[0]), int(info[1])
        return int(v[1]), int(v[2])

    def image(self, idx: int) -> Image.Image:
        v = self.data_dict[idx]
        if isinstance(v, dict):
            import warnings

            path = self._resolve(v["path"])
            try:
                with warnings.catch_warnings():  # the size is judged below from the header, before decoding
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(path) as im:
                        side = self._max_side
                        if not (0 < im.size[0] <= side and 0 < im.size[1] <= side):
                            raise CorruptFileError(
                                f"poisoned image {v['path']} (at {path}) declares {im.size[0]}x{im.size[1]} pixels, "
                                f"more than any dataset's images (at most {side}x{side} accepted; a decompression "
                                f"bomb?); the record folder is damaged or hostile")
                        im.load()
                        return im.copy()
            except FileNotFoundError:
                raise RecordNotFoundError(f"poisoned image {v['path']} not found (looked at {path}); "
                                          f"keep bd_train_dataset/ and bd_test_dataset/ beside attack_result.pt") from None
            except Image.DecompressionBombError:
                raise CorruptFileError(f"poisoned image {v['path']} (at {path}) declares far more pixels than any "
                                       f"dataset's images (a decompression bomb?); the record folder is damaged "
                                       f"or hostile") from None
            except (OSError, ValueError, SyntaxError) as exc:  # a folder, not an image, a truncated PNG ...
                raise CorruptFileError(f"poisoned image {v['path']} (at {path}) cannot be read ({exc}); "
                                       f"the record folder is damaged") from None
        img = v[0]
        if isinstance(img, Image.Image):
            return img
        try:
            return Image.fromarray(np.asarray(img).astype(np.uint8))
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"poisoned sample {idx} is not an image ({exc}); the record is damaged") from None

    def __contains__(self, idx: int) -> bool:
        return idx in self.data_dict

    def __len__(self) -> int:
        return len(self.data_dict)


def _as_int(v, what: str) -> int:
    """An integer index/label as BackdoorBench stores it (int, numpy integer or integer tensor)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
        v = v.item()
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    raise CorruptFileError(f"{what} is {v!r:.60}, expected an integer; the record is damaged")


def _check_entry(key, v):
    """One ``data_dict`` value: ``{path, other_info: [bd, orig]}`` (disk) or ``(image, bd, orig)`` (RAM)."""
    if isinstance(v, dict):
        info = v.get("other_info")
        if not isinstance(v.get("path"), (str, os.PathLike)) or not isinstance(info, (list, tuple)) or len(info) < 2:
            raise CorruptFileError(f"data_dict entry {key!r:.30} is {v!r:.80}, expected {{'path': str, "
                                   f"'other_info': [bd_label, original_label]}}; the record is damaged")
        bd, orig = info[0], info[1]
    elif isinstance(v, (list, tuple)) and len(v) == 3:
        bd, orig = v[1], v[2]
    else:
        raise CorruptFileError(f"data_dict entry {key!r:.30} is {type(v).__name__}, expected a dict (disk mode) or "
                               f"an (image, bd_label, original_label) tuple (RAM mode); the record is damaged")
    _as_int(bd, f"the backdoor label of sample {key!r:.30}")
    _as_int(orig, f"the original label of sample {key!r:.30}")
    return v


class BDDataset(torch.utils.data.Dataset):
    """BackdoorBench's ``prepro_cls_DatasetBD_v2`` (with its transform wrapper), re-implemented.

    Item ``i`` is ``(img, label, original_index, poison_flag, original_label)`` for original index
    ``original_index_array[i]``; ``label`` is the training label (the backdoor label if poisoned).
    With ``getitem_all_switch`` the two labels swap places, as BackdoorBench does to compute RA.
    """

    def __init__(self, raw, poison_indicator: np.ndarray | None = None, original_index_array=None,
                 container: PoisonContainer | None = None, transform=None):
        self.raw = raw
        n = len(raw)
        self.poison_indicator = np.zeros(n) if poison_indicator is None else np.asarray(poison_indicator, dtype=float)
        self.original_index_array = (np.arange(n) if original_index_array is None
                                     else np.asarray(original_index_array, dtype=np.int64))
        self.container = container or PoisonContainer({}, None)
        self.transform = transform
        self.getitem_all_switch = False
        if self.poison_indicator.ndim != 1 or self.original_index_array.ndim != 1:
            raise CorruptFileError("poison_indicator and original_index_array must be 1-D arrays; the record is damaged")
        if len(self.poison_indicator) != n:
            raise CorruptFileError(f"poison_indicator has length {len(self.poison_indicator)} but the clean split has "
                                   f"{n} samples; the record does not belong to this dataset (check --dataset)")
        if len(self.original_index_array) and (self.original_index_array.min() < 0 or self.original_index_array.max() >= n):
            raise CorruptFileError("original_index_array points outside the clean split; the record does not belong "
                                   "to this dataset (check --dataset)")
        missing = [int(i) for i in np.flatnonzero(self.poison_indicator == 1) if int(i) not in self.container]
        if missing:
            raise CorruptFileError(f"{len(missing)} samples are flagged poisoned but absent from the container "
                                   f"(e.g. index {missing[0]}); the record is incomplete")

    def __len__(self) -> int:
        return len(self.original_index_array)

    def __getitem__(self, i: int):
        oi = int(self.original_index_array[i])
        if self.poison_indicator[oi] == 1:
            img = self.container.image(oi)
            label, orig = self.container.labels(oi)
            flag = 1
        else:
            img, orig = self.raw[oi]
            label, flag = orig, 0
        if self.transform is not None:
            img = self.transform(img)
        if self.getitem_all_switch:
            return img, orig, oi, flag, label
        return img, label, oi, flag, orig

    def subset(self, indices) -> "BDDataset":
        out = BDDataset.__new__(BDDataset)
        out.__dict__.update(self.__dict__)
        out.original_index_array = self.original_index_array[np.asarray(indices, dtype=np.int64)]
        return out

    # -- fast paths -------------------------------------------------------------------------------
    def label_arrays(self) -> dict[str, np.ndarray]:
        """Labels and flags of every item without decoding any image."""
        oi = self.original_index_array
        targets = np.asarray(_targets(self.raw), dtype=np.int64)
        orig = targets[oi].copy()
        label = orig.copy()
        flag = (self.poison_indicator[oi] == 1)
        for j in np.flatnonzero(flag):
            label[j], orig[j] = self.container.labels(int(oi[j]))
        return {"label": label, "original_index": oi.copy(), "poison": flag, "original_label": orig}

    def to_tensors(self, spec: D.DatasetSpec) -> "SplitTensors":
        arrays = self.label_arrays()
        x = D.to_uint8_tensor(self.raw, spec, self.original_index_array)
        for j in np.flatnonzero(arrays["poison"]):
            x[j] = torch.from_numpy(D.pil_to_uint8(self.container.image(int(arrays["original_index"][j])), spec))
        return SplitTensors(x=x, **{k: torch.from_numpy(v) for k, v in arrays.items()})

    def retrieve_state(self, data_dict: dict | None = None) -> dict:
        """BackdoorBench's state dict of this dataset (``data_dict`` as given or as loaded)."""
        return make_state(data_dict if data_dict is not None else self.container.data_dict, self.poison_indicator,
                          self.original_index_array, self.container.save_folder_path)


def _targets(raw) -> list:
    for attr in ("targets", "labels"):
        t = getattr(raw, attr, None)
        if t is not None:
            return list(np.asarray(t))
    return [raw[i][1] for i in range(len(raw))]


@dataclass
class SplitTensors:
    """A split materialised: uint8 images ``(N, 3, H, W)`` and per-sample labels/flags (CPU tensors)."""

    x: torch.Tensor
    label: torch.Tensor
    original_index: torch.Tensor
    poison: torch.Tensor
    original_label: torch.Tensor

    def __len__(self) -> int:
        return len(self.label)


# ------------------------------------------------------------------------------------------------
# the record

@dataclass
class AttackRecord:
    """One attack record, with everything the rest of the plugin needs."""

    folder: Path
    model_name: str
    num_classes: int
    img_size: tuple
    state_dict: dict
    dataset: str
    data_path: str
    data_root: Path | None
    spec: D.DatasetSpec
    clean_train: BDDataset
    clean_test: BDDataset
    bd_train: BDDataset | None
    bd_test: BDDataset
    settings: dict = field(default_factory=dict)
    baseline: dict | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.folder.name

    def build_model(self, model_name: str | None = None) -> torch.nn.Module:
        name = model_name or self.model_name
        return load_weights(build_model(name, self.num_classes), self.state_dict, model_name=name,
                            source=f"record {self.folder}")

    def tensors(self, split: str) -> SplitTensors:
        """``clean_train``, ``clean_test``, ``bd_train`` or ``bd_test`` as tensors (cached)."""
        if split not in self._cache:
            ds = getattr(self, split)
            if ds is None:
                raise CorruptFileError(f"record {self.folder} has no {split} (bd_train is None); "
                                       f"BURN needs the poisoned training set")
            self._cache[split] = ds.to_tensors(self.spec)
        return self._cache[split]

    def attack_target(self) -> int | None:
        t = self.settings.get("attack_target")
        return int(t) if isinstance(t, (int, np.integer)) else None


def find_record_file(attack_folder: str | os.PathLike) -> Path:
    folder = Path(attack_folder)
    if folder.is_file() and folder.name.endswith(".pt"):
        return folder
    if not folder.exists():
        raise RecordNotFoundError(f"attack folder not found: {folder} (give the folder that holds attack_result.pt)")
    if not folder.is_dir():
        raise RecordNotFoundError(f"{folder} is not a folder (give the folder that holds attack_result.pt)")
    f = folder / "attack_result.pt"
    if not f.is_file():
        raise RecordNotFoundError(f"no attack_result.pt in {folder}; is this an attack record folder?")
    return f


def resolve_attack_folder(name: str | os.PathLike, cwd: str | os.PathLike | None = None) -> Path:
    """BackdoorBench's ``record/<name>`` (under ``cwd``), else ``name`` as a path; must hold attack_result.pt."""
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    raw = Path(name)
    candidates = [raw] if raw.is_absolute() else [cwd / "record" / raw, cwd / raw]
    for c in candidates:
        if (c / "attack_result.pt").is_file():
            return c
        if c.is_file() and c.name == "attack_result.pt":
            return c.parent
    for c in candidates:
        if c.is_file():
            raise RecordNotFoundError(f"{c} is a file, not a folder; give the attack record folder (the one holding "
                                      f"attack_result.pt)")
        if c.is_dir():
            raise RecordNotFoundError(f"no attack_result.pt in {c}; give an attack record folder (the one holding "
                                      f"attack_result.pt)")
    raise RecordNotFoundError(
        f"attack record {str(name)!r} not found: neither record/{name}/ under {cwd} nor the path {name} exists; "
        f"run from the BackdoorBench root or pass the record folder's path to --attack_folder")


#: the command that makes a small record for the benchmarks and diagnostics (named when none is given)
SMALL_RECORD_COMMAND = ("burn attack --attack badnet --dataset fashionmnist --train_subset 3000 --epochs 5 "
                        "--out record/badnet_fm_small")


def require_record_argument(value) -> Path:
    """A script's ``--record``: one line naming the command that makes one when none is given."""
    if not value:
        raise BadInputError(f"no --record given; make a small record with `{SMALL_RECORD_COMMAND}` (needs "
                            f"dataset-fashion-mnist) and pass --record record/badnet_fm_small")
    return Path(value)


def record_dataset(folder: Path) -> str | None:
    """The record's dataset name (from ``info.pickle``, else ``attack_result.pt``), or None if unreadable
    or not a dataset name the registry knows (a record's name never forms a path unchecked)."""
    try:
        info = folder / "info.pickle"
        if info.is_file():
            ds = load_settings_file(info).get("dataset")
            if D.known_dataset(ds):
                return ds
        obj = torch_load(folder / "attack_result.pt", what="attack record")
        ds = obj.get("clean_data") if isinstance(obj, dict) else None
        return ds if D.known_dataset(ds) else None
    except BurnError:
        return None  # the record loader reports the real problem later, with the right message


def bb_root_of(record_folder: Path) -> Path:
    """The folder that contains ``record/`` (``<R>`` in ``<R>/record/<attack>``)."""
    return record_folder.resolve().parent.parent


def resolve_data_root(record_folder: Path, data_path: str, dataset: str,
                      dataset_path: str | os.PathLike | None = None) -> Path:
    """``<R>/data/<dataset>`` by BackdoorBench's rule, or ``<dataset_path>/<dataset>`` if given.

    BackdoorBench rewrites the stored ``data_path`` to start at its first ``data`` component, under the
    folder that contains ``record/``. Path components are compared whole, so ``/home/recorder`` or
    ``/mydata`` do not confuse it as they confuse BackdoorBench's string search.
    """
    if dataset_path is not None:
        return Path(dataset_path) / dataset
    parts = Path(str(data_path)).parts
    rel = Path(*parts[parts.index("data"):]) if "data" in parts else Path("data") / dataset
    root = bb_root_of(record_folder)
    # the record says where its data are; it may not say anywhere outside <R>/data
    if ".." in rel.parts or not _inside((root / rel).resolve(), (root / "data").resolve()):
        raise CorruptFileError(f"record {record_folder}: data_path {data_path!r:.200} leads outside {root / 'data'}; "
                               f"a record's data live under <BackdoorBench root>/data: fix data_path, or pass "
                               f"--dataset_path with the folder that holds the {dataset} data")
    return root / rel


def _inside(path: Path, base: Path) -> bool:
    """True if the resolved ``path`` is ``base`` or lies under it."""
    return path == base or base in path.parents


def _check_state(state: Any, name: str, path: Path) -> dict:
    if not isinstance(state, dict):
        raise CorruptFileError(f"{path}: {name} is a {type(state).__name__}, expected a dataset state dict")
    missing = [k for k in ("bd_data_container", "original_index_array", "poison_indicator") if k not in state]
    if missing:
        raise CorruptFileError(f"{path}: {name} state lacks {', '.join(missing)}; not a BackdoorBench record")
    cont = state["bd_data_container"]
    if not isinstance(cont, dict) or not isinstance(cont.get("data_dict"), dict):
        raise CorruptFileError(f"{path}: {name}.bd_data_container has no data_dict; not a BackdoorBench record")
    return state


def load_record(attack_folder: str | os.PathLike, *, trusted: bool = False, dataset: str | None = None,
                dataset_path: str | os.PathLike | None = None) -> AttackRecord:
    """Load an attack record folder (or an ``attack_result.pt`` path) into an :class:`AttackRecord`.

    ``dataset`` is checked against the record's own ``clean_data`` (a disagreement is an error, not an
    override); ``dataset_path`` overrides where the clean data are looked for. No pickle code runs
    unless ``trusted``.
    """
    path = find_record_file(attack_folder)
    folder = path.parent
    obj = torch_load(path, trusted=trusted, what="attack record")
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} holds a {type(obj).__name__}, not an attack record dict")
    missing = [k for k in RECORD_KEYS if k not in obj]
    if missing:
        raise CorruptFileError(f"{path} lacks key(s) {', '.join(missing)}; not a BackdoorBench attack_result.pt")
    name = obj["clean_data"]
    if not isinstance(name, str):
        raise CorruptFileError(f"{path}: clean_data is {name!r}, expected a dataset name")
    spec = D.get_spec(name) if name in D.list_datasets() else None
    if spec is None:
        raise UnknownNameError(f"record {folder} is on dataset {name!r}, which the plugin does not know; "
                               f"known: {', '.join(D.list_datasets())}")
    if dataset is not None and dataset != name:
        raise ShapeMismatchError(f"--dataset {dataset} disagrees with the record, which was made on {name}; "
                                 f"drop the flag or pass --dataset {name}")
    num_classes, img_size = obj["num_classes"], obj["img_size"]
    if not isinstance(num_classes, (int, np.integer)) or int(num_classes) != spec.num_classes:
        raise ShapeMismatchError(f"record says {num_classes!r} classes but {name} has {spec.num_classes}; "
                                 f"the record is inconsistent")
    try:
        size_ok = tuple(int(v) for v in img_size)[:2] == spec.img_size[:2]
    except (TypeError, ValueError):
        size_ok = False
    if not size_ok:
        raise ShapeMismatchError(f"record img_size {img_size!r} differs from {name}'s {spec.img_size}; "
                                 f"the record is inconsistent")
    if not isinstance(obj["model"], dict):
        raise CorruptFileError(f"{path}: model is a {type(obj['model']).__name__}, expected a state dict")
    if not isinstance(obj["model_name"], str):
        raise CorruptFileError(f"{path}: model_name is {obj['model_name']!r}, expected a string")
    data_root = resolve_data_root(folder, str(obj["data_path"]), name, dataset_path)
    root_arg = data_root if (data_root.exists() or name != "fashionmnist") else None
    raw_train = D.load_raw(name, root_arg, train=True)
    raw_test = D.load_raw(name, root_arg, train=False)

    resolver = _png_resolver(folder)
    train_tf, test_tf = D.get_transform(spec, True), D.get_transform(spec, False)

    def build(state, raw, tf, label):
        state = _check_state(state, label, path)
        cont = state["bd_data_container"]
        container = PoisonContainer(cont["data_dict"], cont.get("save_folder_path"), resolver)
        try:
            ds = BDDataset(raw, state["poison_indicator"], state["original_index_array"], container, tf)
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
            raise CorruptFileError(f"{path}: {label} state is malformed ({exc})") from exc
        for i in container.data_dict:
            if not all(0 <= y < spec.num_classes for y in container.labels(i)):
                raise CorruptFileError(f"{path}: {label} sample {i} has labels {container.labels(i)} outside "
                                       f"0..{spec.num_classes - 1}; the record is damaged")
        return ds

    bd_train = build(obj["bd_train"], raw_train, train_tf, "bd_train") if obj["bd_train"] is not None else None
    bd_test = build(obj["bd_test"], raw_test, test_tf, "bd_test")
    settings = _read_settings(folder, trusted)
    return AttackRecord(
        folder=folder, model_name=obj["model_name"], num_classes=int(num_classes), img_size=tuple(img_size),
        state_dict=obj["model"], dataset=name, data_path=str(obj["data_path"]), data_root=root_arg, spec=spec,
        clean_train=BDDataset(raw_train, transform=train_tf), clean_test=BDDataset(raw_test, transform=test_tf),
        bd_train=bd_train, bd_test=bd_test, settings=settings, baseline=read_summary(folder / "attack_df_summary.csv"))


def _png_resolver(folder: Path):
    """A stored PNG path names ``.../bd_train_dataset/...`` or ``.../bd_test_dataset/...``: it is read from
    that folder inside the record itself, wherever the path says the record was. A path that leads
    anywhere else (no such part, a ``..`` after it) is refused."""

    def resolve(p: str) -> Path:
        parts = Path(str(p)).parts
        for marker in ("bd_train_dataset", "bd_test_dataset"):
            if marker in parts:
                tail = parts[len(parts) - 1 - parts[::-1].index(marker):]
                if ".." not in tail:   # lexically inside; links the user made (a mirrored record) are followed
                    return folder.joinpath(*tail)
        raise CorruptFileError(f"poisoned image path {str(p)!r:.200} leads outside the record's bd_train_dataset/ "
                               f"and bd_test_dataset/ folders; the record is damaged or hostile")
    return resolve


def _read_settings(folder: Path, trusted: bool) -> dict:
    f = folder / "info.pickle"
    if not f.is_file():
        return {}
    try:
        return load_settings_file(f, trusted=trusted)
    except CorruptFileError:
        return {}


def read_summary(path: Path, row: str = "last") -> dict | None:
    """One row of a BackdoorBench ``*_df_summary.csv`` as ``{column: float}`` (None if absent)."""
    import pandas as pd

    if not Path(path).is_file():
        return None
    try:
        df = pd.read_csv(path, index_col=0)
    except Exception:  # noqa: BLE001 - a broken CSV is treated as absent
        return None
    if row in df.index:
        r = df.loc[row]
    elif len(df):
        r = df.iloc[0]
    else:
        return None
    out = {}
    for k, v in r.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


# ------------------------------------------------------------------------------------------------
# writing

def write_poisoned_split(folder: Path, split_dir: str, images: dict[int, np.ndarray], bd_labels: dict[int, int],
                         orig_labels: dict[int, int], *, ram: bool = False, record_name: str | None = None) -> dict:
    """Write poisoned samples the way BackdoorBench does; returns the ``data_dict``.

    Disk mode: ``<folder>/<split_dir>/<orig_label>/<idx>.png``, stored path relative to the
    BackdoorBench root (``./record/<record_name>/<split_dir>/...``; ``record_name`` defaults to the
    folder's name, and differs from it while a record is built in a staging folder). RAM mode keeps
    PIL images.
    """
    data_dict: dict = {}
    rel_base = f"./record/{record_name or folder.name}/{split_dir}"
    for idx, img in images.items():
        key = np.int64(idx)
        pil = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if ram:
            data_dict[key] = (pil, int(bd_labels[idx]), int(orig_labels[idx]))
            continue
        out = folder / split_dir / str(int(orig_labels[idx])) / f"{int(idx)}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        pil.save(out)
        data_dict[key] = {"path": f"{rel_base}/{int(orig_labels[idx])}/{int(idx)}.png",
                          "other_info": [int(bd_labels[idx]), int(orig_labels[idx])]}
    return data_dict


def make_state(data_dict: dict, poison_indicator: np.ndarray, original_index_array: np.ndarray,
               save_folder_path: str | None) -> dict:
    """A dataset state exactly as BackdoorBench's ``retrieve_state`` returns it."""
    return {
        "bd_data_container": {"save_folder_path": save_folder_path, "data_dict": data_dict, "save_file_format": ".png"},
        "getitem_all": True,
        "getitem_all_switch": False,
        "original_index_array": np.asarray(original_index_array, dtype=np.int64),
        "poison_indicator": np.asarray(poison_indicator, dtype=np.float64),
        "save_folder_path": save_folder_path,
    }


def save_record(folder: Path, *, model_name: str, num_classes: int, state_dict: dict, dataset: str,
                bd_train: dict | None, bd_test: dict) -> Path:
    """Write ``attack_result.pt`` with BackdoorBench's eight keys, in its order, atomically."""
    spec = D.get_spec(dataset)
    obj = {
        "model_name": model_name,
        "num_classes": int(num_classes),
        "model": {k: v.detach().cpu() for k, v in state_dict.items()},
        "data_path": f"./data/{dataset}",
        "img_size": spec.img_size,
        "clean_data": dataset,
        "bd_train": bd_train,
        "bd_test": bd_test,
    }
    return save_torch(obj, Path(folder) / "attack_result.pt")
