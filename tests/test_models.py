"""Model zoo: BackdoorBench-compatible PreActResNet-18 state dicts, registry, weight loading."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.utils.prune as prune

from burn_plugin.bench.models import (build_model, list_models, load_weights, strip_module_prefix,
                                      unprune_state_dict)
from burn_plugin.errors import CorruptFileError, ShapeMismatchError, UnknownNameError
from burn_plugin.core.tensors import find_classifier


@pytest.fixture(scope="module")
def pre18():
    torch.manual_seed(0)
    return build_model("preactresnet18", 10)


def test_preactresnet18_state_dict_layout(pre18):
    sd = pre18.state_dict()
    assert len(sd) == 102
    shortcuts = sorted(k for k in sd if "shortcut" in k)
    assert shortcuts == ["layer2.0.shortcut.0.weight", "layer3.0.shortcut.0.weight", "layer4.0.shortcut.0.weight"]
    assert not any(k.startswith("layer1.") and "shortcut" in k for k in sd)
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["linear.weight"].shape) == (10, 512) and tuple(sd["linear.bias"].shape) == (10,)
    assert tuple(sd["layer2.0.shortcut.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(sd["layer4.1.conv2.weight"].shape) == (512, 512, 3, 3)
    # per block: bn1 (5 entries incl. num_batches_tracked), conv1, bn2 (5), conv2
    block_keys = sorted(k[len("layer1.0."):] for k in sd if k.startswith("layer1.0."))
    assert block_keys == sorted(["bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                                 "bn1.num_batches_tracked", "conv1.weight", "bn2.weight", "bn2.bias",
                                 "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked", "conv2.weight"])
    assert {k.split(".")[0] for k in sd} == {"conv1", "layer1", "layer2", "layer3", "layer4", "linear"}
    assert not any(re.search(r"conv\d*\.bias", k) for k in sd)  # bias-free convolutions
    # children in BackdoorBench's order (NAD/FP index them)
    assert [n for n, _ in pre18.named_children()] == ["conv1", "layer1", "layer2", "layer3", "layer4",
                                                       "avgpool", "linear"]
    assert find_classifier(pre18, torch.rand(2, 3, 32, 32))[0] == "linear"


@pytest.mark.parametrize("size", [32, 28, 64])
def test_preactresnet18_forward_sizes(pre18, size):
    pre18.eval()
    with torch.no_grad():
        out = pre18(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_preactresnet34_honours_num_classes():
    m = build_model("preactresnet34", 7)
    sd = m.state_dict()
    assert tuple(sd["linear.weight"].shape) == (7, 512)
    assert sum(1 for k in sd if k.endswith(".conv1.weight") and k.startswith("layer")) == 3 + 4 + 6 + 3
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_smallresnet_is_small_and_forwards():
    m = build_model("smallresnet", 10)
    assert sum(p.numel() for p in m.parameters()) < 200_000
    assert [n for n, _ in m.named_children()][-1] == "linear"
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    assert type(build_model("small", 3)) is type(m)


def test_registry_lists_backdoorbench_names():
    names = set(list_models())
    for n in ("preactresnet18", "resnet18", "resnet34", "resnet50", "vgg19_bn", "mobilenet_v3_large",
              "densenet161", "efficientnet_b3", "mobilenet_v2", "squeezenet1_0", "shufflenet_v2_x1_0"):
        assert n in names
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_build_with_num_classes(name):
    m = build_model(name, 10)
    assert find_classifier(m, torch.rand(2, 3, 32, 32))[1].out_features == 10
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_name():
    with pytest.raises(UnknownNameError, match="nope.*preactresnet18"):
        build_model("nope", 10)


def test_strip_module_prefix():
    sd = {"module.a": 1, "module.b.c": 2}
    assert strip_module_prefix(sd) == {"a": 1, "b.c": 2}
    mixed = {"module.a": 1, "b": 2}  # only a DataParallel dict (every key prefixed) is stripped
    assert strip_module_prefix(mixed) == mixed
    assert strip_module_prefix({}) == {}


def test_load_weights_strips_module_and_folds_pruning():
    torch.manual_seed(1)
    src = build_model("smallresnet", 10)
    prune.l1_unstructured(src.linear, "weight", amount=0.5)
    prune.ln_structured(src.layer2.conv2, "weight", amount=0.25, n=1, dim=0)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    assert "module.linear.weight_orig" in sd and "module.linear.weight_mask" in sd
    folded = unprune_state_dict(strip_module_prefix(sd))
    assert "linear.weight" in folded and "linear.weight_orig" not in folded and "linear.weight_mask" not in folded
    dst = load_weights(build_model("smallresnet", 10), sd, model_name="smallresnet")
    w = dst.linear.weight.detach()
    assert torch.equal(w, (src.linear.weight_orig * src.linear.weight_mask).detach())
    assert int((w == 0).sum()) == w.numel() // 2
    assert torch.equal(dst.layer2.conv2.weight, src.layer2.conv2.weight.detach())
    x = torch.randn(2, 3, 28, 28)
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.allclose(src(x), dst(x))


def test_load_weights_class_count_mismatch():
    sd = build_model("preactresnet18", 43).state_dict()
    with pytest.raises(ShapeMismatchError) as ei:
        load_weights(build_model("preactresnet18", 10), sd, model_name="preactresnet18")
    msg = str(ei.value)
    assert "linear.weight" in msg and "class" in msg and "43" in msg and "10" in msg


def test_load_weights_wrong_architecture():
    with pytest.raises(ShapeMismatchError, match="missing"):
        load_weights(build_model("smallresnet", 10), build_model("preactresnet18", 10).state_dict())


@pytest.mark.parametrize("bad", [
    {"linear.weight": "not a tensor"},
    {"linear.weight": [[0.0] * 64] * 10},
    {7: torch.zeros(1)},
])
def test_load_weights_rejects_non_tensor_entries(bad):
    sd = dict(build_model("smallresnet", 10).state_dict())
    sd.update(bad)
    with pytest.raises(CorruptFileError):
        load_weights(build_model("smallresnet", 10), sd)


def test_load_weights_rejects_non_dict():
    with pytest.raises(CorruptFileError):
        load_weights(build_model("smallresnet", 10), ["a", "b"])
