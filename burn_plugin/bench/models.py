"""Model zoo: every classifier name BackdoorBench's ``generate_cls_model`` accepts without downloaded
weights, plus a small residual net for CPU work.

A registry, not an if/else chain: ``@register_model("name")`` adds a builder ``(num_classes) -> nn.Module``;
:func:`build_model` looks names up; :func:`list_models` lists them. ``preactresnet18`` is written here
(no BackdoorBench code) so that its ``state_dict`` keys and shapes equal BackdoorBench's
``PreActResNet18``; the torchvision architectures are built the way BackdoorBench builds them
(``torchvision.models.<name>(num_classes=K)``, random init), so a real record's state dict loads.
All models take 3-channel input; grayscale datasets are converted to 3 channels by the data layer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CorruptFileError, ShapeMismatchError
from ..registry import Registry

MODELS: Registry[Callable[[int], nn.Module]] = Registry("model")


def register_model(*names: str):
    """Decorator: register a builder ``fn(num_classes) -> nn.Module`` under one or more names."""
    def deco(fn):
        for n in names:
            MODELS.register(n, fn)
        return fn
    return deco


def list_models() -> list[str]:
    return MODELS.names()


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build an untrained model by BackdoorBench name."""
    return MODELS.get(name)(int(num_classes))


def strip_module_prefix(state_dict: dict) -> dict:
    """Drop a DataParallel ``module.`` prefix from every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def unprune_state_dict(state_dict: dict) -> dict:
    """Fold ``torch.nn.utils.prune`` reparametrisations (``X_orig`` * ``X_mask``) back into ``X``.

    BackdoorBench's FP saves its pruned net this way, so a plain model cannot load it otherwise.
    """
    out = {}
    for k, v in state_dict.items():
        if k.endswith("_orig"):
            base = k[: -len("_orig")]
            mask = state_dict.get(base + "_mask")
            out[base] = v * mask if mask is not None else v
        elif k.endswith("_mask") and (k[: -len("_mask")] + "_orig") in state_dict:
            continue
        else:
            out[k] = v
    return out


def load_weights(model: nn.Module, state_dict: dict, *, model_name: str = "model", source: str = "record") -> nn.Module:
    """Load a state dict after stripping ``module.``/pruning wrappers; mismatches give one clear error."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise CorruptFileError(f"the weights of {source} are not a state dict (names -> tensors); "
                               f"the file is corrupt or not a model checkpoint")
    sd = unprune_state_dict(strip_module_prefix(state_dict))
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ShapeMismatchError(
            f"state dict of {source} does not fit model {model_name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            f"pass the model name the record was trained with (--model)")
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            hint = ""
            if k.endswith(("linear.weight", "fc.weight", "classifier.weight")) or own[k].dim() in (1, 2):
                hint = (f" (class-count mismatch? the weights have {v.shape[0]} outputs, the model "
                        f"{own[k].shape[0]}; the record's num_classes or --dataset does not fit its model)")
            raise ShapeMismatchError(f"state dict of {source} does not fit model {model_name!r}: {k} has shape "
                                     f"{tuple(v.shape)}, the model expects {tuple(own[k].shape)}{hint}")
    model.load_state_dict(sd)
    return model


# ------------------------------------------------------------------------------------------------
# Pre-activation ResNet (He et al. 2016, "Identity mappings"), state-dict compatible with BackdoorBench

class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False))

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        skip = self.shortcut(pre) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(pre)))) + skip


class PreActResNet(nn.Module):
    """Children in order: conv1, layer1..layer4, avgpool, linear (BackdoorBench's layout)."""

    def __init__(self, block, num_blocks, num_classes: int = 10, widths=(64, 128, 256, 512)):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(block, widths[0], num_blocks[0], 1)
        self.layer2 = self._make_layer(block, widths[1], num_blocks[1], 2)
        self.layer3 = self._make_layer(block, widths[2], num_blocks[2], 2)
        self.layer4 = self._make_layer(block, widths[3], num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


@register_model("preactresnet18")
def preactresnet18(num_classes: int) -> nn.Module:
    return PreActResNet(PreActBlock, [2, 2, 2, 2], num_classes)


@register_model("preactresnet34")
def preactresnet34(num_classes: int) -> nn.Module:
    """PreAct-ResNet-34 (the paper's CIFAR-100/Tiny model). Unlike BackdoorBench's, honours ``num_classes``."""
    return PreActResNet(PreActBlock, [3, 4, 6, 3], num_classes)


# ------------------------------------------------------------------------------------------------
# A small residual net for CPU work (not in BackdoorBench)

class SmallResNet(nn.Module):
    """Stem conv (16 ch) then two stride-2 pre-activation residual blocks (32, 64 ch); ~60k parameters.

    Trains a Fashion-MNIST epoch (60k images at 28x28) in about half a minute on 2 CPU cores. The last
    child is ``linear`` like PreActResNet, so FP/ULRL-style code that looks for it works.
    """

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer1 = PreActBlock(widths[0], widths[1], 2)
        self.layer2 = PreActBlock(widths[1], widths[2], 2)
        self.bn = nn.BatchNorm2d(widths[2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        out = self.layer2(self.layer1(self.conv1(x)))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.avgpool(out), 1))


@register_model("smallresnet", "small")
def smallresnet(num_classes: int) -> nn.Module:
    return SmallResNet(num_classes)


# ------------------------------------------------------------------------------------------------
# torchvision architectures, built as BackdoorBench builds them (random init, ``num_classes=K``)

_TORCHVISION_NAMES = (
    "resnet18", "resnet34", "resnet50", "alexnet", "vgg11", "vgg16", "vgg19", "vgg19_bn",
    "squeezenet1_0", "densenet161", "densenet121", "shufflenet_v2_x1_0", "mobilenet_v2",
    "mobilenet_v3_large", "resnext50_32x4d", "wide_resnet50_2", "mnasnet1_0", "efficientnet_b0",
    "efficientnet_b3", "googlenet", "inception_v3",
)


def _torchvision_builder(name: str):
    def build(num_classes: int) -> nn.Module:
        import torchvision.models as tvm

        kwargs = {"num_classes": num_classes}
        if name in ("googlenet", "inception_v3"):
            kwargs["init_weights"] = True  # BackdoorBench's None means True (with a warning); aux heads kept
        return getattr(tvm, name)(weights=None, **kwargs)
    build.__name__ = name
    build.__doc__ = f"torchvision ``{name}(num_classes=K)``, random initialisation (no download)."
    return build


for _n in _TORCHVISION_NAMES:
    register_model(_n)(_torchvision_builder(_n))
