"""Standalone poisoning attacks that write complete BackdoorBench record folders.

``BadNets`` (patch) and ``Blended``, all-to-one or all-to-all, on any dataset the plugin can load.
Poison indices are drawn as BackdoorBench draws them (interface.md 2.4): ``round(pratio * N)``
indices uniformly from all classes with ``numpy``'s ``choice(..., replace=False)`` after seeding;
test: every non-target-class sample (all-to-one) or every sample (all-to-all). The record folder
holds ``attack_result.pt``, ``info.pickle``, ``attack_df.csv``, ``attack_df_summary.csv``,
``train_poison_index_list.pickle`` and the poisoned PNGs in ``bd_train_dataset/`` and
``bd_test_dataset/``, all as a BackdoorBench attack writes them.

Triggers (no BackdoorBench resources are needed):
- BadNets: BackdoorBench's default trigger, a 3x3 white square in the bottom-right corner, applied as
  ``img * (trigger == 0) + trigger * (trigger > 0)``.
- Blended: ``(1 - alpha) * img + alpha * pattern`` truncated to uint8, alpha 0.2; the pattern is an
  image file (e.g. BackdoorBench's ``hello_kitty.jpeg``) or, by default, seeded uniform noise.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from datetime import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.tensors import PixelSpaceModel
from ..core.train import train_epochs
from ..errors import ConfigError, EmptySelectionError, OutputExistsError, UnknownNameError
from ..fileio import save_csv, save_json, save_torch
from . import datasets as D
from .metrics import as_metric_row, evaluate, summarize
from .models import build_model
from .records import SplitTensors, make_state, save_record, write_poisoned_split

log = logging.getLogger("burn.attack")

_ATTACKS: dict[str, Callable] = {}


def register_attack(name: str):
    def deco(cls):
        _ATTACKS[name] = cls
        return cls
    return deco


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str, **kwargs):
    try:
        return _ATTACKS[name](**kwargs)
    except KeyError:
        raise UnknownNameError(f"unknown attack {name!r}; choose one of: {', '.join(list_attacks())}") from None


@register_attack("badnet")
class BadNets:
    """BadNets patch trigger: a ``size`` x ``size`` white square ``margin`` px from the bottom-right."""

    def __init__(self, size: int = 3, margin: int = 0, trigger_image: str | None = None, **_):
        self.size, self.margin, self.trigger_image = size, margin, trigger_image

    def trigger(self, h: int, w: int, c: int) -> np.ndarray:
        if self.trigger_image:
            return _load_image(self.trigger_image, h, w, c)
        t = np.zeros((h, w, c) if c > 1 else (h, w), dtype=np.uint8)
        t[h - self.margin - self.size: h - self.margin, w - self.margin - self.size: w - self.margin] = 255
        return t

    def apply(self, img: np.ndarray) -> np.ndarray:
        t = self.trigger(img.shape[0], img.shape[1], img.shape[2] if img.ndim == 3 else 1)
        out = img.astype(np.int64) * (t == 0) + t.astype(np.int64) * (t > 0)
        return np.clip(out, 0, 255).astype(np.uint8)


@register_attack("blended")
class Blended:
    """Blended trigger: ``(1 - alpha) * img + alpha * pattern`` (alpha 0.2 as BackdoorBench)."""

    def __init__(self, alpha: float = 0.2, trigger_image: str | None = None, pattern_seed: int = 12345, **_):
        if not 0 < alpha <= 1:
            raise ConfigError(f"blend alpha must be in (0, 1], got {alpha}")
        self.alpha, self.trigger_image, self.pattern_seed = alpha, trigger_image, pattern_seed

    def trigger(self, h: int, w: int, c: int) -> np.ndarray:
        if self.trigger_image:
            return _load_image(self.trigger_image, h, w, c)
        rng = np.random.RandomState(self.pattern_seed)
        return rng.randint(0, 256, size=(h, w, c) if c > 1 else (h, w)).astype(np.uint8)

    def apply(self, img: np.ndarray) -> np.ndarray:
        t = self.trigger(img.shape[0], img.shape[1], img.shape[2] if img.ndim == 3 else 1).astype(np.float64)
        out = (1 - self.alpha) * img.astype(np.float64) + self.alpha * t
        return np.clip(out, 0, 255).astype(np.uint8)


def _load_image(path: str, h: int, w: int, c: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if c == 3 else "L").resize((w, h))
        return np.asarray(im, dtype=np.uint8)


def poison_indices(labels: np.ndarray, pratio: float, seed: int, *, clean_label_target: int | None = None) -> np.ndarray:
    """Indices of training samples to poison (BackdoorBench's rule; see module docstring)."""
    n = round(pratio * len(labels))
    pool = np.arange(len(labels)) if clean_label_target is None else np.flatnonzero(labels == clean_label_target)
    if n <= 0:
        raise EmptySelectionError(f"pratio {pratio} of {len(labels)} samples is {n} samples; raise --pratio")
    if n > len(pool):
        raise ConfigError(f"pratio {pratio} asks for {n} samples but only {len(pool)} can be poisoned")
    rng = np.random.RandomState(seed)
    return np.sort(rng.choice(pool, n, replace=False))


def _subset(n: int, k: int | None, seed: int, what: str) -> np.ndarray:
    """All of ``range(n)``, or ``k`` of them drawn with ``seed`` (sorted); kept in the record as
    BackdoorBench keeps subsets, in ``original_index_array``."""
    if k is None or k >= n:
        return np.arange(n)
    if k <= 0:
        raise ConfigError(f"--{what} must be a positive number of samples, got {k}")
    return np.sort(np.random.RandomState(seed).choice(n, k, replace=False))


def bd_label_fn(label_trans: str, target: int, num_classes: int) -> Callable[[int], int]:
    if label_trans == "all2one":
        return lambda y: int(target)
    if label_trans == "all2all":
        return lambda y: int((y + 1) % num_classes)
    raise ConfigError(f"unknown --attack_label_trans {label_trans!r}; use all2one or all2all")


@dataclass
class AttackSettings:
    """Everything ``burn attack`` takes; saved to ``info.pickle`` like BackdoorBench's ``args``."""

    attack: str = "badnet"
    dataset: str = "fashionmnist"
    model: str = "smallresnet"
    pratio: float = 0.1
    attack_target: int = 0
    attack_label_trans: str = "all2one"
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.01
    sgd_momentum: float = 0.9
    wd: float = 5e-4
    random_seed: int = 0
    device: str = "cpu"
    blend_alpha: float = 0.2
    trigger_image: str | None = None
    dataset_path: str | None = None
    ram_mode: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    eval_every_epoch: bool = True  # False: test metrics only after the last epoch (quick runs)
    extra: dict = field(default_factory=dict)

    def default_epochs(self) -> int:
        # BackdoorBench's prototype epochs; Fashion-MNIST/mnist (not in BackdoorBench) get 5 for CPU work
        return {"fashionmnist": 5, "mnist": 5, "gtsrb": 50, "tiny": 200}.get(self.dataset, 100)


def _split_tensors(spec, raw, images: dict[int, np.ndarray], bd_labels: dict, indices: np.ndarray) -> SplitTensors:
    targets = np.asarray(raw.targets, dtype=np.int64)
    x = D.to_uint8_tensor(raw, spec, indices)
    label = targets[indices].copy()
    poison = np.zeros(len(indices), dtype=bool)
    for j, i in enumerate(indices):
        if int(i) in images:
            x[j] = torch.from_numpy(D.pil_to_uint8(_pil(images[int(i)]), spec))
            label[j] = bd_labels[int(i)]
            poison[j] = True
    return SplitTensors(x=x, label=torch.from_numpy(label), original_index=torch.from_numpy(indices.astype(np.int64)),
                        poison=torch.from_numpy(poison), original_label=torch.from_numpy(targets[indices].copy()))


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr)


def run_attack(settings: AttackSettings, out_folder: Path, *, overwrite: bool = False, clean_reference: bool = False,
               progress: bool = True) -> dict:
    """Poison the data, train the model, write the record folder; returns the final metrics."""
    from tqdm.auto import tqdm

    final_folder = Path(out_folder)
    if (final_folder / "attack_result.pt").exists() and not overwrite:
        raise OutputExistsError(f"{final_folder} already holds an attack record; pass --overwrite or choose another --out")
    if final_folder.exists() and not final_folder.is_dir():
        raise OutputExistsError(f"{final_folder} is a file, not a folder; choose another --out")
    if final_folder.is_dir() and any(final_folder.iterdir()) and not overwrite:
        raise OutputExistsError(f"{final_folder} is not empty (but holds no attack record); pass --overwrite to "
                                f"replace it or choose another --out")
    spec = D.get_spec(settings.dataset)
    build_model(settings.model, spec.num_classes)  # unknown model names fail before any work
    attack = get_attack(settings.attack, alpha=settings.blend_alpha, trigger_image=settings.trigger_image)
    if not 0 <= settings.attack_target < spec.num_classes:
        raise ConfigError(f"--attack_target {settings.attack_target} is not a class of {spec.name} "
                          f"(0..{spec.num_classes - 1})")
    epochs = settings.epochs or settings.default_epochs()
    root = Path(settings.dataset_path) / spec.name if settings.dataset_path else None
    raw_train, raw_test = D.load_raw(spec.name, root, True), D.load_raw(spec.name, root, False)
    torch.manual_seed(settings.random_seed)
    to_bd = bd_label_fn(settings.attack_label_trans, settings.attack_target, spec.num_classes)

    train_targets = np.asarray(raw_train.targets, dtype=np.int64)
    test_targets = np.asarray(raw_test.targets, dtype=np.int64)
    visible = _subset(len(train_targets), settings.train_subset, settings.random_seed + 1, "train_subset")
    train_idx = visible[poison_indices(train_targets[visible], settings.pratio, settings.random_seed)]
    if settings.attack_label_trans == "all2one":
        test_idx = np.flatnonzero(test_targets != settings.attack_target)
    else:
        test_idx = np.arange(len(test_targets))
    test_idx = test_idx[_subset(len(test_idx), settings.test_subset, settings.random_seed + 2, "test_subset")]

    def poison(raw, idx):
        imgs, bd, orig = {}, {}, {}
        for i in tqdm(idx, desc="poisoning", leave=False, disable=not progress):
            img, y = raw[int(i)]
            arr = np.asarray(img.resize((spec.width, spec.height)) if img.size != (spec.width, spec.height) else img)
            imgs[int(i)], bd[int(i)], orig[int(i)] = attack.apply(arr), to_bd(int(y)), int(y)
        return imgs, bd, orig

    tr_imgs, tr_bd, tr_orig = poison(raw_train, train_idx)
    te_imgs, te_bd, te_orig = poison(raw_test, test_idx)
    # the whole record is built in a staging folder beside the target and swapped in when complete,
    # so a killed run never leaves a record whose parts come from two attacks
    name = final_folder.name   # the record's own paths say ./record/<name>, wherever it is built
    with staging_folder(final_folder) as out_folder:
        tr_dict = write_poisoned_split(out_folder, "bd_train_dataset", tr_imgs, tr_bd, tr_orig, ram=settings.ram_mode,
                                       record_name=name)
        te_dict = write_poisoned_split(out_folder, "bd_test_dataset", te_imgs, te_bd, te_orig, ram=settings.ram_mode,
                                       record_name=name)
        folder_str = None if settings.ram_mode else f"./record/{name}"
        train_ind = np.zeros(len(train_targets))
        train_ind[train_idx] = 1
        test_ind = np.zeros(len(test_targets))
        test_ind[test_idx] = 1
        bd_train_state = make_state(tr_dict, train_ind, visible,
                                    folder_str and f"{folder_str}/bd_train_dataset")
        bd_test_state = make_state(te_dict, test_ind, test_idx, folder_str and f"{folder_str}/bd_test_dataset")

        bd_train = _split_tensors(spec, raw_train, tr_imgs, tr_bd, visible)
        bd_test = _split_tensors(spec, raw_test, te_imgs, te_bd, test_idx)
        clean_test = _split_tensors(spec, raw_test, {}, {}, np.arange(len(test_targets)))

        t0 = time.time()
        model, history = _train(settings, spec, bd_train, clean_test, bd_test, epochs, progress, "attack")
        train_seconds = time.time() - t0
        import pandas as pd

        df = pd.DataFrame([as_metric_row(h) for h in history])
        save_record(out_folder, model_name=settings.model, num_classes=spec.num_classes,
                    state_dict=model.model.state_dict(), dataset=spec.name, bd_train=bd_train_state, bd_test=bd_test_state)
        info = {k: v for k, v in asdict(settings).items() if k != "extra"} | settings.extra
        info.update(epochs=epochs, save_path=f"./record/{name}", num_classes=spec.num_classes,
                    img_size=spec.img_size, input_height=spec.height, input_width=spec.width, input_channel=spec.channels,
                    dataset_path=f"./data/{spec.name}")
        save_torch(info, out_folder / "info.pickle")
        # despite its name BackdoorBench stores the 0/1 float indicator over the whole training set here
        save_torch(train_ind, out_folder / "train_poison_index_list.pickle")
        save_csv(df, out_folder / "attack_df.csv")
        save_csv(summarize(df), out_folder / "attack_df_summary.csv")
        final = dict(history[-1])
        final["train_seconds"] = train_seconds
        if clean_reference:
            clean_train = _split_tensors(spec, raw_train, {}, {}, visible)
            _, clean_hist = _train(settings, spec, clean_train, clean_test, bd_test, epochs, progress, "clean reference")
            final["clean_reference_test_acc"] = clean_hist[-1]["test_acc"]
            final["clean_reference_test_asr"] = clean_hist[-1]["test_asr"]
            save_json({"clean_model_test_acc": clean_hist[-1]["test_acc"],
                       "clean_model_test_asr": clean_hist[-1]["test_asr"],
                       "attacked_model_test_acc": final["test_acc"], "epochs": epochs, "model": settings.model},
                      out_folder / "clean_reference.json")
    kept = swap_in(out_folder, final_folder)
    if kept is not None:
        final["replaced_defense_results"] = str(kept)
    return final


@contextlib.contextmanager
def staging_folder(final: Path):
    """A fresh hidden folder beside ``final`` (``.<name>.partial-<pid>``), removed again if the body fails.
    Staging folders left by killed runs (their process gone) are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def swap_in(stage: Path, final: Path) -> Path | None:
    """Put the complete record ``stage`` at ``final`` by renames. An old record there is removed, its
    ``defense/`` results first moved aside to ``<name>.defense-replaced-<time>`` (returned), since they
    belong to the old attack."""
    if not final.exists():
        os.replace(stage, final)
        return None
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(stage, final)
    kept = None
    if (old / "defense").is_dir():
        kept = final.parent / f"{final.name}.defense-replaced-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
        os.replace(old / "defense", kept)
    shutil.rmtree(old, ignore_errors=True)
    return kept


def _train(settings: AttackSettings, spec, train: SplitTensors, clean_test, bd_test, epochs, progress, desc):
    from tqdm.auto import tqdm

    torch.manual_seed(settings.random_seed)
    gen = torch.Generator().manual_seed(settings.random_seed)
    net = build_model(settings.model, spec.num_classes)
    model = PixelSpaceModel(net, spec.mean3, spec.std3).to(settings.device)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.sgd_momentum, weight_decay=settings.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history = []
    bar = tqdm(total=epochs * len(train), desc=f"{desc} ({settings.model}, {epochs} epochs)", unit="img",
               disable=not progress, leave=False)
    n_batches = -(-len(train) // settings.batch_size)

    def on_epoch(rec):
        preds = rec.pop("preds")
        if settings.eval_every_epoch or rec["epoch"] == epochs - 1:
            m = evaluate(model, clean_test, bd_test, batch_size=256, device=settings.device)
        else:
            m = dict.fromkeys(("clean_test_loss_avg_over_batch", "bd_test_loss_avg_over_batch", "test_acc",
                               "test_asr", "test_ra"))
        poison = train.poison
        row = {"epoch": rec["epoch"], "batch": n_batches,
               "train_epoch_loss_avg_over_batch": rec["train_epoch_loss_avg_over_batch"], "train_acc": rec["train_acc"],
               "train_acc_clean_only": _acc(preds[~poison], train.label[~poison]),
               "train_asr_bd_only": _acc(preds[poison], train.label[poison]),
               "train_ra_bd_only": _acc(preds[poison], train.original_label[poison]),
               "clean_test_loss_avg_over_batch": m["clean_test_loss_avg_over_batch"],
               "bd_test_loss_avg_over_batch": m["bd_test_loss_avg_over_batch"],
               "test_acc": m["test_acc"], "test_asr": m["test_asr"], "test_ra": m["test_ra"]}
        history.append(row)
        if m["test_acc"] is not None:
            bar.set_postfix(acc=f"{m['test_acc']:.3f}", asr=f"{m['test_asr']:.3f}" if m["test_asr"] is not None else "-")
        log.info("%s epoch %d: %s", desc, rec["epoch"], json.dumps({k: v for k, v in row.items() if v is not None}))

    train_epochs(model, train.x, train.label, epochs=epochs, optimizer=opt, scheduler=sched,
                 batch_size=settings.batch_size, device=settings.device, hflip=spec.hflip, generator=gen,
                 on_epoch=on_epoch, progress=bar, collect_preds=True)
    bar.close()
    model.cpu()
    return model, history


def _acc(pred: torch.Tensor, y: torch.Tensor):
    return float((pred == y).float().mean()) if len(y) else None
