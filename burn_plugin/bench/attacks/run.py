"""Running an attack: poison, train, write a complete BackdoorBench record folder, swap it in whole."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.config import integer_setting
from ...core.tensors import PixelSpaceModel, state_hash
from ...core.train import train_epochs
from ...errors import BurnError, ConfigError, OutputExistsError
from ...fileio import folder_lock, save_csv, save_json, save_torch, torch_load
from .. import datasets as D
from ..metrics import as_metric_row, evaluate, summarize
from ..models import build_model
from ..records import SplitTensors, make_state, save_record, write_poisoned_split
from .base import _subset, bd_label_fn, check_image, get_attack, list_attacks

log = logging.getLogger("burn.attack")


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

    #: ``burn attack``'s flags (:func:`burn_plugin.flags.add_settings_flags`): field -> help, the default
    #: added from the field; a field without a help text is set from Python only
    _HELP = {
        "model": "model name from the zoo; `burn info --models` lists them",
        "pratio": "share of training samples poisoned",
        "attack_target": "target class for all2one",
        "attack_label_trans": "all2one: every poisoned sample -> target; all2all: y -> (y+1) mod K",
        "epochs": "training epochs (default: the dataset's, BackdoorBench's prototype value; 5 for fashionmnist/mnist)",
        "batch_size": "training batch size, BackdoorBench's",
        "lr": "SGD learning rate, cosine schedule",
        "random_seed": "seed for poison indices and training",
        "device": "cpu, cuda, cuda:0 ...",
        "blend_alpha": "Blended: blend ratio",
        "trigger_image": "image file for the trigger (Blended pattern or BadNets patch mask); default: Blended uses "
                         "seeded noise, BadNets a 3x3 white corner square",
        "dataset_path": "folder holding <dataset>/ (BackdoorBench's ./data); fashionmnist is also found in "
                        "/usr/share/datasets/fashion-mnist",
        "ram_mode": "keep poisoned images inside attack_result.pt (BackdoorBench's RAM mode; such records need "
                    "--trust-record to load) instead of PNG files",
        "train_subset": "train on this many training samples drawn with the seed (kept in the record as BackdoorBench "
                        "keeps subsets); default: all",
        "test_subset": "keep this many poisoned test samples in bd_test; default: all",
    }
    _CHOICES = {"attack_label_trans": ("all2one", "all2all")}
    _ALIASES = {"attack_target": ("--target",)}   # spellings besides --<field> and --<field-with-dashes>

    @classmethod
    def help_of(cls, key: str) -> str | None:
        """The help text of flag ``key`` (None: no flag); the attacks and datasets as registered now."""
        if key == "attack":
            return f"attack: {', '.join(list_attacks())}"
        if key == "dataset":
            return ", ".join(D.list_datasets())
        return cls._HELP.get(key)

    def validate(self) -> None:
        """Every number checked up front, before any file is read or written: ``pratio`` a share in (0, 1]
        (NaN, Inf, negative and > 1 refused), integers at most their bound (``--epochs 1e23`` would train
        forever), the trigger image's header sane (see :func:`~.base.open_image`)."""
        p = self.pratio
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and 0 < p <= 1):
            raise ConfigError(f"--pratio is the share of training samples poisoned, in (0, 1]; got {p!r:.40}")
        for k in ("lr", "sgd_momentum", "wd", "blend_alpha"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"--{k} must be a finite number, got {v!r:.40}")
        if self.lr <= 0 or self.wd < 0:
            raise ConfigError(f"--lr must be > 0 and --wd >= 0, got {self.lr} and {self.wd}")
        self.epochs = None if self.epochs is None else integer_setting("epochs", self.epochs, flag="--epochs")
        if self.epochs is not None and self.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0 (0 or left out: the dataset's default), got {self.epochs}")
        self.batch_size = integer_setting("batch_size", self.batch_size, flag="--batch_size")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        self.random_seed = integer_setting("random_seed", self.random_seed, flag="--random_seed")
        if self.random_seed < 0:
            raise ConfigError(f"--random_seed must be in [0, 2**32), got {self.random_seed}")
        self.attack_target = integer_setting("attack_target", self.attack_target, flag="--attack_target")
        for k in ("train_subset", "test_subset"):  # more than the split means all of it
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, integer_setting(k, v, flag=f"--{k}", maximum=10 ** 9))
        if self.trigger_image:
            check_image(self.trigger_image, "--trigger_image")
        if self.extra.get("mask_path"):
            check_image(self.extra["mask_path"], "--mask_path")

    def default_epochs(self) -> int:
        """The dataset's (:class:`~burn_plugin.bench.datasets.DatasetSpec`): BackdoorBench's prototype
        epochs; the 28x28 sets get 5 for CPU work."""
        return D.get_spec(self.dataset).default_epochs


@dataclass
class AttackContext:
    """What an attack's ``prepare`` gets: the settings, the raw splits, which samples are poisoned, and
    a clean-trained model of the record's architecture (trained once with the attack's seed and epochs,
    kept in ``cache_dir`` beside the record, reused by every attack on the same data)."""

    settings: AttackSettings
    spec: object
    raw_train: object
    raw_test: object
    train_index: np.ndarray      # training samples to poison (indices into raw_train)
    test_index: np.ndarray       # test samples to poison
    visible: np.ndarray          # training samples the model is trained on
    epochs: int
    cache_dir: Path
    progress: bool = True

    def images(self, split: str, indices) -> torch.Tensor:
        """Clean images of ``split`` (``train``/``test``) as one uint8 ``(N, 3, H, W)`` tensor."""
        return D.to_uint8_tensor(self.raw_train if split == "train" else self.raw_test, self.spec, indices)

    def clean_model_key(self) -> str:
        """What the clean helper model depends on: dataset, model, seed, training settings and samples."""
        s = self.settings
        return state_hash(torch.from_numpy(np.asarray(self.visible, dtype=np.int64)),
                          extra=repr((self.spec.name, s.model, s.random_seed, self.epochs, s.batch_size, s.lr,
                                      s.sgd_momentum, s.wd)))

    def cached(self, name: str, make):
        """``make()``'s result (tensors, numpy arrays, plain data), kept as ``cache_dir/name`` and reused
        by later attacks; an entry that cannot be read safely is made again."""
        f = self.cache_dir / name
        if f.is_file():
            try:
                obj = torch_load(f, what="attack cache entry")
                log.info("reused %s", f)
                return obj
            except BurnError:
                pass
        obj = make()
        save_torch(obj, f)
        return obj

    def clean_model(self) -> torch.nn.Module:
        """The record's architecture trained on the clean visible training set (pixel-space input, eval
        mode, CPU); cached by :meth:`clean_model_key`."""
        s = self.settings

        def train() -> dict:
            clean = _split_tensors(self.spec, self.raw_train, {}, {}, self.visible)
            model, _ = _train(s, self.spec, clean, None, None, self.epochs, self.progress, "clean helper model")
            return model.model.state_dict()

        net = build_model(s.model, self.spec.num_classes)
        net.load_state_dict(self.cached(f"clean_{self.spec.name}_{s.model}_{self.clean_model_key()}.pt", train))
        return PixelSpaceModel(net, self.spec.mean3, self.spec.std3).eval()


def _split_tensors(spec, raw, images: dict[int, np.ndarray], bd_labels: dict, indices: np.ndarray) -> SplitTensors:
    targets = np.asarray(raw.targets, dtype=np.int64)
    x = D.to_uint8_tensor(raw, spec, indices)
    label = targets[indices].copy()
    poison = np.zeros(len(indices), dtype=bool)
    for j, i in enumerate(indices):
        if int(i) in images:
            x[j] = torch.from_numpy(D.pil_to_uint8(Image.fromarray(images[int(i)]), spec))
            label[j] = bd_labels[int(i)]
            poison[j] = True
    return SplitTensors(x=x, label=torch.from_numpy(label), original_index=torch.from_numpy(indices.astype(np.int64)),
                        poison=torch.from_numpy(poison), original_label=torch.from_numpy(targets[indices].copy()))


def run_attack(settings: AttackSettings, out_folder: Path, *, overwrite: bool = False, clean_reference: bool = False,
               progress: bool = True) -> dict:
    """Poison the data, train the model, write the record folder; returns the final metrics. A second
    ``burn attack`` into the same folder while this one runs is refused (a lock beside the folder)."""
    settings.validate()  # before the lock and any file: a bad setting is one line, nothing written
    spec = D.get_spec(settings.dataset)
    build_model(settings.model, spec.num_classes)  # unknown model names fail before any work
    attack = get_attack(settings.attack, alpha=settings.blend_alpha, trigger_image=settings.trigger_image,
                        **settings.extra)
    if not 0 <= settings.attack_target < spec.num_classes:
        raise ConfigError(f"--attack_target {settings.attack_target} is not a class of {spec.name} "
                          f"(0..{spec.num_classes - 1})")
    with folder_lock(out_folder, what="burn attack"):
        return _run_attack(settings, spec, attack, Path(out_folder), overwrite=overwrite,
                           clean_reference=clean_reference, progress=progress)


def _run_attack(settings: AttackSettings, spec, attack, final_folder: Path, *, overwrite: bool, clean_reference: bool,
                progress: bool) -> dict:
    from tqdm.auto import tqdm

    if (final_folder / "attack_result.pt").exists() and not overwrite:
        raise OutputExistsError(f"{final_folder} already holds an attack record; pass --overwrite or choose another --out")
    if final_folder.exists() and not final_folder.is_dir():
        raise OutputExistsError(f"{final_folder} is a file, not a folder; choose another --out")
    if (final_folder.is_dir() and not (final_folder / "attack_result.pt").is_file()
            and any(final_folder.iterdir())):
        # --overwrite replaces a record, never a folder of something else (it would be deleted)
        raise OutputExistsError(f"{final_folder} is not empty and holds no attack record (no attack_result.pt); "
                                f"--overwrite replaces only a record folder: choose another --out or empty it")
    epochs = settings.epochs or settings.default_epochs()
    root = Path(settings.dataset_path) / spec.name if settings.dataset_path else None
    raw_train, raw_test = D.load_raw(spec.name, root, True), D.load_raw(spec.name, root, False)
    torch.manual_seed(settings.random_seed)
    to_bd = bd_label_fn(settings.attack_label_trans, settings.attack_target, spec.num_classes)

    train_targets = np.asarray(raw_train.targets, dtype=np.int64)
    test_targets = np.asarray(raw_test.targets, dtype=np.int64)
    visible = _subset(len(train_targets), settings.train_subset, settings.random_seed + 1, "train_subset")
    train_idx = attack.train_indices(visible, train_targets[visible], settings)
    all2one = settings.attack_label_trans == "all2one"
    test_idx = np.flatnonzero(test_targets != settings.attack_target) if all2one else np.arange(len(test_targets))
    test_idx = test_idx[_subset(len(test_idx), settings.test_subset, settings.random_seed + 2, "test_subset")]

    ctx = AttackContext(settings, spec, raw_train, raw_test, train_idx, test_idx, visible, epochs,
                        final_folder.parent / ".attack_cache", progress)
    attack.prepare(ctx)

    def poison(raw, idx, split):
        imgs, bd, orig = {}, {}, {}
        for i in tqdm(idx, desc=f"poisoning {split}", leave=False, disable=not progress):
            img, y = raw[int(i)]
            arr = np.asarray(img.resize((spec.width, spec.height)) if img.size != (spec.width, spec.height) else img)
            label = attack.train_label(int(i), int(y), to_bd(int(y))) if split == "train" else to_bd(int(y))
            imgs[int(i)], bd[int(i)], orig[int(i)] = attack.apply(arr, index=int(i), split=split), label, int(y)
        return imgs, bd, orig

    tr_imgs, tr_bd, tr_orig = poison(raw_train, train_idx, "train")
    te_imgs, te_bd, te_orig = poison(raw_test, test_idx, "test")
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
        bd_train_state = make_state(tr_dict, train_ind, visible, folder_str and f"{folder_str}/bd_train_dataset")
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
        info = {k: v for k, v in asdict(settings).items() if k != "extra"} | settings.extra | attack.params()
        info["attack"] = attack.info_name or settings.attack   # BackdoorBench's own name (label_consistent, ...)
        if isinstance(getattr(attack, "stats", None), dict):   # what the trigger's maker measured (SSBA's bit accuracy)
            info["attack_stats"] = {k: float(v) for k, v in attack.stats.items()}
        info.update(epochs=epochs, save_path=f"./record/{name}", num_classes=spec.num_classes,
                    img_size=spec.img_size, input_height=spec.height, input_width=spec.width, input_channel=spec.channels,
                    dataset_path=f"./data/{spec.name}")
        save_torch(info, out_folder / "info.pickle")
        # despite its name BackdoorBench stores the 0/1 float indicator over the whole training set here
        save_torch(train_ind, out_folder / "train_poison_index_list.pickle")
        save_csv(df, out_folder / "attack_df.csv")
        save_csv(summarize(df), out_folder / "attack_df_summary.csv")
        final = dict(history[-1], train_seconds=train_seconds)
        if clean_reference:
            clean_m = evaluate(ctx.clean_model(), clean_test, bd_test, batch_size=256, device=settings.device)
            final.update(clean_reference_test_acc=clean_m["test_acc"], clean_reference_test_asr=clean_m["test_asr"])
            save_json({"clean_model_test_acc": clean_m["test_acc"],
                       "clean_model_test_asr": clean_m["test_asr"],
                       "attacked_model_test_acc": final["test_acc"], "epochs": epochs, "model": settings.model},
                      out_folder / "clean_reference.json")
        kept = swap_in(out_folder, final_folder)  # inside: a refused swap removes the staging folder
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
    if final.is_dir() and not (final / "attack_result.pt").is_file() and any(final.iterdir()):
        # checked again at the rename: something other than a record appeared there during the run
        raise OutputExistsError(f"{final} now holds files but no attack record; nothing was replaced: choose "
                                f"another --out or empty it")
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
    """Train the record's architecture on ``train``; ``bd_test=None`` skips the test metrics."""
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
        if bd_test is not None and (settings.eval_every_epoch or rec["epoch"] == epochs - 1):
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
