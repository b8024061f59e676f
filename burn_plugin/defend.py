"""Run a defense on an attack record and write BackdoorBench-style results.

``defend(attack_folder, ...)`` loads the record with the plugin's own loader, runs a registered defense
(:mod:`burn_plugin.defenses`; this module knows none by name, it calls the hooks of its spec), evaluates
ACC/ASR/RA before and after exactly as BackdoorBench does, and writes into
``<attack_folder>/defense/<method>/`` (or the folder the spec's ``output_name`` names):

- ``defense_result.pt``: exactly ``{model_name, num_classes, model}`` (BackdoorBench's keys);
- ``<method>_df.csv``: one row per round (``epoch`` = round) with BackdoorBench's metric columns;
- ``<method>_df_summary.csv``: rows ``last``, ``valid_max``, ``exist_nan_value``;
- ``detection_info.csv``: BackdoorBench's detection format (all poison / label-flipped poison);
- ``scores.npz``: l(x), adversarial labels, BD, PD, S and the selections, for plots;
- ``run.json``: config, versions, device, seed, timings, metrics, detection report;
- ``log/<timestamp>.log``; and the plots its files allow (ROC, distance histogram, per-round curves).

Every file is written atomically, ``defense_result.pt`` last, so its presence marks a finished run.
An existing result is never replaced unless ``overwrite``.

Started by ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1), a defense whose spec says
``distributed`` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA, each process on
``cuda:LOCAL_RANK``) and splits its per-sample passes over the ranks; rank 0 alone writes files, logs
and progress bars. Every rank checks the input first, so a bad input stops all of them before any work.
"""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bench.figures import plot_defense_folder
from .bench.metrics import METRIC_COLUMNS, as_metric_row, evaluate, summarize
from .bench.records import AttackRecord, load_record
from .core.distributed import join_process_group
from .core.tensors import PixelSpaceModel
from .defenses import all_defenses, get_defense
from .errors import (RENDEZVOUS_TIMEOUT_VAR, BurnError, ConfigError, OutputExistsError, OutputNotWritableError,
                     RankFailedError, stray_torchrun_variables, torchrun_env)
from .fileio import (FileCheckpoint, finish_run, folder_lock, save_csv, save_json, save_torch, start_run,
                     started_here, writable_folder)

log = logging.getLogger("burn")


def resolve_device(device: str | None) -> str:
    device = device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available here; pass --device cpu")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    return device


def rank_device(device: str) -> str:
    """``cuda`` becomes this process's own GPU (``cuda:LOCAL_RANK``) under torchrun."""
    env = torchrun_env()   # LOCAL_RANK checked with the other torchrun variables
    if device == "cuda" and env["world"] > 1:
        return f"cuda:{env['local_rank']}"
    return device


@contextlib.contextmanager
def process_group(device: str, method: str):
    """Join torchrun's process group for the run (nothing outside torchrun: ``WORLD_SIZE``/``RANK`` left
    in a shell without torchrun's ``TORCHELASTIC_RUN_ID`` make a one-process run, with a warning). The
    rendezvous waits at most ``$BURN_RENDEZVOUS_TIMEOUT`` seconds (default 60) for the other ranks; a
    failure on this rank becomes one ``error: rank R of W ...`` line (torchrun then stops the others)."""
    env = torchrun_env()
    world = env["world"]
    if world == 1:
        stray = stray_torchrun_variables()
        if stray:
            print(f"warning: {' and '.join(stray)} set but torchrun did not start this process; running as one "
                  f"process (unset {' and '.join(stray)}, or start the run with torchrun)", file=sys.stderr, flush=True)
        yield
        return
    import torch.distributed as dist

    if not get_defense(method).distributed:
        which = ", ".join(d.display for d in all_defenses() if d.distributed)
        raise ConfigError(f"--method {method} runs in one process; start it with `burn defend`, not torchrun "
                          f"(only {which} splits its work over processes)")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    started_here = not dist.is_initialized()
    if started_here:
        join_process_group("nccl" if device.startswith("cuda") else "gloo", rank=env["rank"], world=world,
                           timeout_s=env["timeout"], where=f"{env['master_addr']}:{env['master_port']}",
                           retry_hint=f", or raise {RENDEZVOUS_TIMEOUT_VAR} (seconds; now {env['timeout']:g})")
    rank = dist.get_rank()
    level = log.level
    if rank != 0:
        log.setLevel(logging.ERROR)  # rank 0 speaks for the run
    try:
        yield
    except BurnError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, then torchrun stops the others
        raise RankFailedError(f"rank {rank} of {world} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        log.setLevel(level)
        if started_here:
            dist.destroy_process_group()


def is_main_rank() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def setup_logger(out: Path) -> tuple[logging.Handler, Path]:
    (out / "log").mkdir(parents=True, exist_ok=True)
    path = out / "log" / f"{datetime.now().strftime('%Y_%m_%d_%H_%M_%S')}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # INFO goes to the log file; the console gets warnings (below) and the summary
    if not any(getattr(h, "_burn_console", False) for h in log.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("warning: %(message)s"))
        console._burn_console = True
        log.addHandler(console)
    return handler, path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere ``platform.processor()``), or ''."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def versions() -> dict:
    """What a run's numbers may depend on beyond its config and seed: the packages, the CPU and torch's
    thread count (they set the order of float sums), so that two runs of one config that disagree can
    be told apart."""
    import torchvision

    return {"burn_plugin": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "cpu": cpu_name(), "torch_threads": torch.get_num_threads()}


def refuse_finished(out: Path, method: str, overwrite: bool) -> None:
    """A finished result (its ``defense_result.pt``) is never replaced without ``overwrite``."""
    if (Path(out) / "defense_result.pt").exists() and not overwrite:
        raise OutputExistsError(f"{out} already holds a finished {method} result; pass --overwrite to replace it "
                                f"or --output_dir for a new folder (--resume only continues an unfinished run)")


def default_output_name(method: str, config) -> str:
    """``<record>/defense/<this>/``: the defense's ``output_name`` hook's choice for ``config``, else its name."""
    return get_defense(method).folder_name(config)


#: files that mark a folder as a defense result (a finished or an interrupted run)
RESULT_MARKS = ("defense_result.pt", "run.json", "checkpoint/last.pt")


def is_result_folder(out: Path) -> bool:
    """True if ``out`` holds a defense result (finished or interrupted), by :data:`RESULT_MARKS`."""
    return any((Path(out) / m).is_file() for m in RESULT_MARKS)


def prepare_output(record: AttackRecord, method: str, output_dir, overwrite: bool, resume: bool,
                   config=None) -> Path:
    """The output folder, checked writable before any work. A finished result (``defense_result.pt``)
    is replaced only with ``overwrite``; ``resume`` continues an *unfinished* run only; ``overwrite``
    replaces a defense result folder, never a folder of anything else."""
    out = Path(output_dir) if output_dir else record.folder / "defense" / default_output_name(method, config)
    refuse_finished(out, method, overwrite)
    if overwrite and out.is_dir() and any(out.iterdir()) and not is_result_folder(out):
        raise OutputExistsError(f"{out} is not empty and holds no defense result; --overwrite replaces only a "
                                f"result folder: choose another --output_dir")
    if not writable_folder(out):
        raise OutputNotWritableError(f"cannot write results to {out} (not a writable folder, or the disk is full); "
                                     f"choose a writable --output_dir")
    return out


def defend(attack_folder, *, method: str = "burn", config=None, device: str = "cpu", dataset: str | None = None,
           model_name: str | None = None, dataset_path: str | None = None, trusted: bool = False, output_dir=None,
           overwrite: bool = False, resume: bool = False, progress: bool = True, run_info: dict | None = None,
           extra: dict | None = None) -> dict | None:
    """Defend one record; returns the summary also written to ``run.json`` (``None`` on every torchrun
    rank but the first, which writes it)."""
    cls = get_defense(method).config_class  # validates the name and loads the registered methods
    config = config if config is not None else cls()
    record = load_record(attack_folder, trusted=trusted, dataset=dataset, dataset_path=dataset_path)
    # after the record (a broken record is the first thing to report), and before the output folder is made:
    # rank_device checks torchrun's variables, so a bad one writes nothing
    device = rank_device(resolve_device(device))
    model = record.build_model(model_name)
    out = prepare_output(record, method, output_dir, overwrite, resume, config)
    if resume:   # an unreadable checkpoint, or one the check_resume hook refuses (other settings), fails now
        saved, check = FileCheckpoint(out / "checkpoint").load(), get_defense(method).check_resume
        if saved is not None and check is not None:
            check(saved, config)
    with process_group(device, method):
        if not is_main_rank():
            get_defense(method).run(record=record, model=model, config=config, device=device, evaluator=None,
                                    out=out, resume=resume, progress=False, extra=extra or {})
            return None
        with folder_lock(out, what=f"burn defend --method {method}"):
            refuse_finished(out, method, overwrite)  # again, now that no other run can write here
            if not resume or not started_here(out):
                start_run(out)  # a new run: checkpoints found here before no longer match
            return _defend_main(record, model, method, config, device, out, model_name, resume, progress, run_info,
                                extra, overwrite)


def _defend_main(record, model, method, config, device, out, model_name, resume, progress, run_info, extra,
                 overwrite=False) -> dict:
    handler, log_path = setup_logger(out)
    started = time.time()
    try:
        log.info("defense %s on %s (model %s, dataset %s, device %s)", method, record.folder, record.model_name,
                 record.dataset, device)
        clean_test, bd_test = record.tensors("clean_test"), record.tensors("bd_test")

        def evaluator(pixel_model):
            return evaluate(pixel_model, clean_test, bd_test, batch_size=256, device=device)

        spec = record.spec
        before = evaluator(PixelSpaceModel(model, spec.mean3, spec.std3).to(device))
        log.info("before: %s", json.dumps(before))
        defense = get_defense(method)
        outcome = defense.run(record=record, model=model, config=config, device=device, evaluator=evaluator,
                              out=out, resume=resume, progress=progress, extra=extra or {})
        final_model = outcome["model"].cpu()
        after = outcome.get("after") or evaluator(PixelSpaceModel(final_model, spec.mean3, spec.std3).to(device))
        rows = [as_metric_row(r) for r in outcome["history"]]
        config_dict = config.to_dict() if hasattr(config, "to_dict") else config
        import pandas as pd

        df = pd.DataFrame(rows)
        if "epoch" not in df.columns and "round" in df.columns:
            df.insert(0, "epoch", df["round"])
        save_csv(df, out / f"{method}_df.csv")
        cols = [c for c in METRIC_COLUMNS if c in df.columns]
        save_csv(summarize(df[cols]) if cols else pd.DataFrame(), out / f"{method}_df_summary.csv")
        for name, writer in outcome.get("files", {}).items():
            writer(out / name)
        summary = {
            "method": method, "record": str(record.folder), "attack": record.settings.get("attack"),
            "dataset": record.dataset, "model": model_name or record.model_name, "device": device,
            "processes": torchrun_env()["world"], "config": config_dict,
            "before": before, "after": after, "wall_seconds": time.time() - started,
            "timings": outcome.get("timings", {}), "versions": versions(), "command": sys.argv,
            "log": str(log_path), "data_used": outcome.get("data_used"),
            # what a results table names it by (burn_plugin.report reads these, never the registry's code)
            "label": defense.display, "named_settings": defense.named_settings(config_dict),
        }
        summary.update(outcome.get("summary", {}))
        summary.update(run_info or {})
        save_json(summary, out / "run.json")
        try:   # ROC, distance histogram and per-round curves beside the results
            plot_defense_folder(out)
        except Exception as exc:  # noqa: BLE001 - plots are a convenience, never a reason to lose results
            log.warning("plots were not written (%s: %s)", type(exc).__name__, exc)
        refuse_finished(out, method, overwrite)  # checked again before the result that marks a finished run
        # written last: its presence marks a finished run (the overwrite check and `burn compare` rely on it)
        save_torch({"model_name": model_name or record.model_name, "num_classes": record.num_classes,
                    "model": final_model.state_dict()}, out / "defense_result.pt")
        finish_run(out)
        log.info("after: %s", json.dumps(after))
        return summary
    finally:
        log.removeHandler(handler)
        handler.close()


def print_summary(summary: dict) -> None:
    b, a = summary["before"], summary["after"]

    def fmt(m):
        return "  ".join(f"{k[5:].upper()} {m[k]:.4f}" for k in ("test_acc", "test_asr", "test_ra") if m.get(k) is not None)
    print(f"{summary['method']} on {summary['record']}")
    print(f"  before: {fmt(b)}")
    print(f"  after:  {fmt(a)}")
    lines = get_defense(summary["method"]).summary_lines
    for line in lines(summary) if lines else ():
        print(line)
    t = summary.get("timings", {})
    if t:
        print("  time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in t.items()) + f", total {summary['wall_seconds']:.0f}s")
    print(f"  results: {Path(summary['log']).parent.parent}")
