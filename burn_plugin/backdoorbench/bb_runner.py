#!/usr/bin/env python
"""Run one BackdoorBench script *unmodified*, with run-time fixes for current torch / numpy.

Launched by ``burn sweep`` with BackdoorBench's own interpreter (which may be a venv without
``burn_plugin``), so this file imports only the standard library at module level, and numpy /
torch / torchvision / BackdoorBench's own modules inside the fixes that need them::

    <bb python> /abs/path/bb_runner.py [--root DIR] [--fix NAME]... [--report FILE] \\
        defense/fp.py --result_file badnet_fm --yaml_path ./config/defense/fp/cifar10.yaml ...

It changes to ``--root`` (default: the working directory), puts the root first on ``sys.path``,
applies the fixes asked for, sets ``sys.argv = [SCRIPT, ARGS...]`` and runs the script with
``runpy.run_path(SCRIPT, run_name="__main__")``, exactly as ``python SCRIPT ARGS...`` would
(hyphenated names such as ``defense/i-bau.py`` and the scripts' module-global ``args`` work as
usual). Nothing is ever written into BackdoorBench's files: every fix replaces an attribute in
memory, in this process only.

Fixes (``--fix NAME``, repeatable, or comma-separated; ``--list-fixes`` prints them):

``np-infty``
    NumPy 2 removed ``np.infty``; BackdoorBench's shared plot helper (``general_plot_for_epoch``)
    uses it, so FP, ANP, I-BAU and SAU crash at their first plot. Sets ``numpy.infty = numpy.inf``
    when it is missing (counted as acted only then).
``torch-load``
    torch >= 2.6 loads with ``weights_only=True`` by default, and ``attack_result.pt`` holds numpy
    arrays, so ``load_attack_result`` fails. This **wraps ``torch.load``** (it does not set
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, which would affect every file): a call that does not choose
    ``weights_only`` itself and loads a file under ``<root>/record/`` keeps ``weights_only=True`` with
    the numpy types a record holds allow-listed (the list of the plugin's own safe loader, read from
    ``safe_globals.py`` one folder up by its path, since this runner imports nothing from the package). A file that needs anything else (code) fails to load; nothing in it runs.
``torch-load-trusted``
    The same calls get ``weights_only=False``, the behaviour BackdoorBench was written for (RAM-mode
    records hold PIL images). The full unpickler runs code from the file: ``burn sweep`` uses it only
    with ``--trust-record``.
``cuda-fallback``
    I-BAU builds a tensor with a hard-coded ``torch.zeros_like(images, device='cuda')``, which fails
    on a CPU run ("Torch not compiled with CUDA enabled") and mixes devices on a GPU machine run
    with ``--device cpu``. Wraps ``torch.{zeros,ones,empty,full,rand,randn}_like``: a request for
    device ``cuda`` (no index) for an input that is not on a CUDA device (or when CUDA is not
    available) gets the input's device instead.
``mnist-rgb``
    BackdoorBench's ``mnist`` branch yields 1-channel images, but every model has a 3-channel stem
    and the BadNets trigger is RGB. Replaces ``torchvision.datasets.MNIST`` (which BackdoorBench
    imports inside ``dataset_and_transform_generate``) by a subclass whose items are
    ``img.convert("RGB")``, and makes ``utils.bd_dataset_v2.poisonedCLSDataContainer`` return
    stored poisoned images that are not RGB (a record written in grayscale) converted too.
``mnist-denorm``
    ``get_dataset_denormalization`` negates and inverts a 1-element mean/std list as a whole
    (``-[0.5]`` raises TypeError; SAU crashes on ``mnist``). Wraps it so that 1-element
    normalisations are negated / inverted element-wise; others go to the original.
``hardsigmoid``
    I-BAU differentiates through a gradient; PyTorch has no double backward for ``hardsigmoid``,
    which MobileNetV3 uses. Replaces ``torch.nn.functional.hardsigmoid`` by the equal function
    ``clamp(x + 3, 0, 6) / 6`` (twice differentiable almost everywhere).
``ftsam-index``
    FT-SAM draws its clean subset with ``choose_by_class`` and ignores ``--index``, so it would not
    see the same clean subset as the other defenses. Wraps ``utils.choose_index.choose_by_class``:
    when ``args.index`` is set, the indices come from that file (via BackdoorBench's own
    ``choose_index``), otherwise the original runs.

``--report FILE`` writes a JSON file at exit (also when the script fails): the script, its
arguments, every fix asked for with its description and how many times it acted, versions, and
the exit status ("acted" counts the times a fix changed something: a call redirected, an
image converted, a dataset built). The exit status of the script is this process's exit status.
"""
from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import json
import os
import platform
import runpy
import sys
import time

#: fix name -> one-line description (the docstring above has the reasons)
FIXES = {
    "np-infty": "numpy.infty restored as numpy.inf (removed in NumPy 2; used by general_plot_for_epoch)",
    "torch-load": "torch.load of files under <root>/record/ allows the numpy types of a record (weights_only=True)",
    "torch-load-trusted": "torch.load defaults to weights_only=False for files under <root>/record/ (code runs)",
    "cuda-fallback": "torch.*_like(..., device='cuda') uses the input's device when that is not CUDA",
    "mnist-rgb": "torchvision.datasets.MNIST items converted to RGB (models have a 3-channel stem)",
    "mnist-denorm": "get_dataset_denormalization negates/inverts a 1-element mean/std element-wise",
    "hardsigmoid": "F.hardsigmoid replaced by clamp(x + 3, 0, 6) / 6 (double backward for I-BAU)",
    "ftsam-index": "choose_by_class honours --index (FT-SAM uses the same clean subset as the others)",
}

#: fix name -> number of times it acted (np-infty: 1 if numpy lacked it)
ACTED: dict = {}


def _count(name: str) -> None:
    ACTED[name] = ACTED.get(name, 0) + 1


# ------------------------------------------------------------------------------------------------
# the fixes

def fix_np_infty(root: str) -> None:
    import numpy

    if not hasattr(numpy, "infty"):
        numpy.infty = numpy.inf
        _count("np-infty")


def _wrap_torch_load(root: str, name: str, trusted: bool) -> None:
    import torch

    record_dir = os.path.realpath(os.path.join(root, "record"))
    original = torch.load
    allowed = [] if trusted else _numpy_safe_globals()

    def under_record(f) -> bool:
        if not isinstance(f, (str, bytes, os.PathLike)):
            return False
        try:
            p = os.path.realpath(os.fsdecode(f))
        except (TypeError, ValueError):
            return False
        return os.path.commonpath([p, record_dir]) == record_dir

    @functools.wraps(original)
    def load(f, *args, **kwargs):
        if "weights_only" not in kwargs and under_record(f):
            _count(name)
            if trusted:
                kwargs["weights_only"] = False
            else:
                kwargs["weights_only"] = True
                with torch.serialization.safe_globals(allowed):
                    return original(f, *args, **kwargs)
        return original(f, *args, **kwargs)

    torch.load = load


def _numpy_safe_globals() -> list:
    """The list in ``../safe_globals.py``, loaded by its path (this runner may run without the package)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "safe_globals.py")
    spec = importlib.util.spec_from_file_location("_burn_safe_globals", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.numpy_safe_globals()


def fix_cuda_fallback(root: str) -> None:
    import torch

    def bare_cuda(device) -> bool:
        if isinstance(device, str):
            return device.strip() == "cuda"
        if isinstance(device, torch.device):
            return device.type == "cuda" and device.index is None
        return False

    def wrap(name: str):
        original = getattr(torch, name)

        @functools.wraps(original)
        def like(input, *args, **kwargs):
            device = kwargs.get("device")
            if bare_cuda(device) and isinstance(input, torch.Tensor) and (
                    input.device.type != "cuda" or not torch.cuda.is_available()):
                kwargs["device"] = input.device
                _count("cuda-fallback")
            return original(input, *args, **kwargs)

        setattr(torch, name, like)

    for name in ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"):
        wrap(name)


def fix_mnist_rgb(root: str) -> None:
    from PIL import Image

    datasets = importlib.import_module("torchvision.datasets")  # (the parent's attribute may not be bound yet)
    base = datasets.MNIST

    class MNIST(base):
        """torchvision's MNIST with RGB PIL images (burn sweep's run-time fix ``mnist-rgb``)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _count("mnist-rgb")

        def __getitem__(self, index):
            img = Image.fromarray(self.data[index].numpy()).convert("RGB")
            target = int(self.targets[index])
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return img, target

    MNIST.__module__ = base.__module__
    # resources/folders are looked up by the class name: keep "MNIST" so the raw files are found
    MNIST.__name__ = MNIST.__qualname__ = base.__name__
    datasets.MNIST = MNIST


def fix_mnist_rgb_container(root: str) -> None:
    """The poisoned images of a record (PNG files, or PIL images in RAM mode) as RGB too: a record whose
    poisoned copies were stored in grayscale would otherwise give batches of mixed channel counts."""
    cls = importlib.import_module("utils.bd_dataset_v2").poisonedCLSDataContainer
    original = cls.__getitem__

    @functools.wraps(original)
    def __getitem__(self, key):
        item = original(self, key)
        img = item[0] if isinstance(item, tuple) and item else None
        if getattr(img, "mode", "RGB") != "RGB" and hasattr(img, "convert"):
            _count("mnist-rgb")
            return (img.convert("RGB"), *item[1:])
        return item

    cls.__getitem__ = __getitem__


def fix_mnist_denorm(root: str) -> None:
    from torchvision import transforms

    mod = importlib.import_module("utils.aggregate_block.dataset_and_transform_generate")
    original = mod.get_dataset_denormalization

    @functools.wraps(original)
    def get_dataset_denormalization(normalization):
        mean, std = list(normalization.mean), list(normalization.std)
        if len(mean) > 1 and len(std) > 1:
            return original(normalization)
        _count("mnist-denorm")
        # x_norm = (x - m) / s  =>  x = x_norm * s + m: divide by 1/s, then subtract -m
        return transforms.Compose([
            transforms.Normalize(mean=[0.0] * len(std), std=[1.0 / float(s) for s in std]),
            transforms.Normalize(mean=[-float(m) for m in mean], std=[1.0] * len(mean)),
        ])

    mod.get_dataset_denormalization = get_dataset_denormalization


def fix_hardsigmoid(root: str) -> None:
    import torch
    import torch.nn.functional as F

    def hardsigmoid(input, inplace: bool = False):
        _count("hardsigmoid")
        out = torch.clamp(input + 3.0, 0.0, 6.0) / 6.0
        return input.copy_(out) if inplace else out

    F.hardsigmoid = hardsigmoid


def fix_ftsam_index(root: str) -> None:
    mod = importlib.import_module("utils.choose_index")
    original = mod.choose_by_class

    @functools.wraps(original)
    def choose_by_class(args, dataset):
        if getattr(args, "index", None):
            _count("ftsam-index")
            return [int(i) for i in mod.choose_index(args, len(dataset)).reshape(-1)]
        return original(args, dataset)

    mod.choose_by_class = choose_by_class


#: fix name -> [(function, the module whose import triggers it), ...]
APPLY = {
    "np-infty": [(fix_np_infty, "numpy")],
    "torch-load": [(functools.partial(_wrap_torch_load, name="torch-load", trusted=False), "torch")],
    "torch-load-trusted": [(functools.partial(_wrap_torch_load, name="torch-load-trusted", trusted=True), "torch")],
    "cuda-fallback": [(fix_cuda_fallback, "torch")],
    "mnist-rgb": [(fix_mnist_rgb, "torchvision.datasets"), (fix_mnist_rgb_container, "utils.bd_dataset_v2")],
    "mnist-denorm": [(fix_mnist_denorm, "utils.aggregate_block.dataset_and_transform_generate")],
    "hardsigmoid": [(fix_hardsigmoid, "torch")],
    "ftsam-index": [(fix_ftsam_index, "utils.choose_index")],
}


class PostImportHooks(importlib.abc.MetaPathFinder):
    """Run a fix right after its target module has been imported (at once if it already is), so the
    runner itself imports nothing heavy: a script that never imports torch never pays for it, and
    a ``from module import name`` in the script already sees the patched attribute."""

    def __init__(self):
        self.hooks: dict = {}

    def add(self, module: str, fn) -> None:
        if module in sys.modules:
            fn()
            return
        self.hooks.setdefault(module, []).append(fn)
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.hooks:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HookedLoader(spec.loader, self, fullname)
        return spec

    def fire(self, fullname: str) -> None:
        for fn in self.hooks.pop(fullname, []):  # once: a later find_spec of the same name finds nothing
            fn()


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hooks: PostImportHooks, fullname: str):
        self.loader, self.hooks, self.fullname = loader, hooks, fullname

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # the module keeps its real loader; only this one execution goes through the wrapper
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.hooks.fire(self.fullname)


# ------------------------------------------------------------------------------------------------
# command line

USAGE = ("usage: bb_runner.py [--root DIR] [--fix NAME[,NAME...]]... [--report FILE] [--list-fixes] "
         "SCRIPT [ARGS...]")


def parse(argv: list) -> dict:
    """Runner options up to the first argument that is not one of them (the script); the rest are
    the script's own arguments, passed through untouched."""
    opts = {"root": None, "fixes": [], "report": None, "list": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(USAGE + "\n\n" + __doc__)
            sys.exit(0)
        if a == "--list-fixes":
            opts["list"] = True
            i += 1
            continue
        name, eq, value = a.partition("=")
        if name in ("--root", "--fix", "--report"):
            if not eq:
                if i + 1 >= len(argv):
                    _die(f"{name} needs a value")
                value = argv[i + 1]
                i += 1
            if name == "--fix":
                opts["fixes"] += [v.strip() for v in value.split(",") if v.strip()]
            else:   # --root, --report
                opts[name[2:]] = value
            i += 1
            continue
        break
    opts["script"] = argv[i] if i < len(argv) else None
    opts["args"] = argv[i + 1:]
    return opts


def _die(msg: str) -> None:
    print(f"bb_runner: error: {msg}\n{USAGE}", file=sys.stderr)
    sys.exit(2)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "torchvision"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def write_report(path: str, opts: dict, status, started: float, error: str | None) -> None:
    report = {
        "script": opts["script"], "args": opts["args"], "root": os.getcwd(),
        "fixes": {name: {"description": FIXES[name], "acted": ACTED.get(name, 0)} for name in opts["fixes"]},
        "fixes_that_acted": [n for n in opts["fixes"] if ACTED.get(n, 0) > 0],
        "exit_status": status, "error": error, "seconds": round(time.time() - started, 3),
        "versions": _versions(),
    }
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"bb_runner: warning: report {path} not written ({exc})", file=sys.stderr)


def main(argv=None) -> int:
    opts = parse(list(sys.argv[1:] if argv is None else argv))
    if opts["list"]:
        for name, desc in FIXES.items():
            print(f"{name:14} {desc}")
        return 0
    unknown = [f for f in opts["fixes"] if f not in APPLY]
    if unknown:
        _die(f"unknown fix(es) {', '.join(unknown)}; known: {', '.join(FIXES)}")
    if not opts["script"]:
        _die("no script given")
    root = os.path.abspath(opts["root"] or os.getcwd())
    if not os.path.isdir(root):
        _die(f"--root {root} is not a folder")
    report = os.path.abspath(opts["report"]) if opts["report"] else None
    os.chdir(root)
    script = opts["script"]
    if not os.path.isfile(script):
        _die(f"script {script} not found under {root}")
    # the root (holding the scripts' top-level packages utils/, models/, defense/, dataset/) first on
    # sys.path, in place of this runner's own folder (whose modules must not shadow anything)
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = root
    else:
        sys.path.insert(0, root)
    started = time.time()
    status, error = 0, None
    try:
        hooks = PostImportHooks()
        for name in dict.fromkeys(opts["fixes"]):
            for fn, module in APPLY[name]:
                hooks.add(module, functools.partial(fn, root))
        sys.argv = [script, *opts["args"]]
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            error = str(code)
            print(code, file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - reported, then re-raised for the traceback
        status, error = 1, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if report:
            write_report(report, opts, status, started, error)
    return status


if __name__ == "__main__":
    sys.exit(main())
