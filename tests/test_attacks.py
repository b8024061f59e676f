"""Standalone attacks: poison indices, label maps, triggers, and the record folder run_attack writes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from burn_plugin.bench.attacks import (AttackSettings, BadNets, Blended, bd_label_fn, get_attack, list_attacks,
                                       poison_indices, run_attack)
from burn_plugin.bench.records import load_record
from burn_plugin.errors import ConfigError, EmptySelectionError, OutputExistsError, UnknownNameError, UntrustedFileError
from burn_plugin.fileio import load_settings_file, torch_load
from conftest import N_TEST, N_TRAIN, mnist_arrays
from synthetic import make_mnist_layout
from test_records import check_record_format


def test_poison_indices_count_seed_and_classes():
    labels = np.repeat(np.arange(10), 50)  # 500 samples, 10 classes
    idx = poison_indices(labels, 0.1, seed=0)
    assert len(idx) == 50 == round(0.1 * 500)
    assert len(np.unique(idx)) == 50 and np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < 500
    assert np.array_equal(idx, poison_indices(labels, 0.1, seed=0))
    assert not np.array_equal(idx, poison_indices(labels, 0.1, seed=1))
    assert len(np.unique(labels[idx])) >= 8  # drawn from all classes, target class included
    assert len(poison_indices(labels, 0.013, seed=0)) == round(0.013 * 500) == 6
    cl = poison_indices(labels, 0.05, seed=0, clean_label_target=3)
    assert len(cl) == 25 and set(labels[cl]) == {3}
    with pytest.raises(EmptySelectionError):
        poison_indices(labels, 0.0009, seed=0)
    with pytest.raises(ConfigError):
        poison_indices(labels, 0.2, seed=0, clean_label_target=3)  # 100 asked, 50 of class 3


def test_label_maps():
    a2o = bd_label_fn("all2one", 3, 10)
    assert [a2o(y) for y in range(10)] == [3] * 10
    a2a = bd_label_fn("all2all", 0, 10)
    assert [a2a(y) for y in range(10)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert bd_label_fn("all2all", 0, 43)(42) == 0
    with pytest.raises(ConfigError):
        bd_label_fn("one2one", 0, 10)


def test_badnets_trigger():
    assert {"badnet", "blended"} <= set(list_attacks())
    rng = np.random.RandomState(0)
    for shape in ((32, 32, 3), (28, 28)):
        img = rng.randint(0, 255, shape).astype(np.uint8)
        bn = BadNets()
        t = bn.trigger(shape[0], shape[1], 3 if len(shape) == 3 else 1)
        assert t.shape == shape and t.dtype == np.uint8
        assert int((t > 0).sum()) == 9 * (3 if len(shape) == 3 else 1)
        assert (t[-3:, -3:] == 255).all()  # 3x3 white square in the bottom-right corner
        out = bn.apply(img)
        expected = img.astype(np.int64) * (t == 0) + t.astype(np.int64) * (t > 0)
        np.testing.assert_array_equal(out, expected.astype(np.uint8))
        np.testing.assert_array_equal(out[:-3], img[:-3])
        np.testing.assert_array_equal(out[:, :-3], img[:, :-3])
        assert (out[-3:, -3:] == 255).all()
    with pytest.raises(UnknownNameError):
        get_attack("trojan")


def test_blended_trigger():
    img = np.full((8, 8, 3), 100, np.uint8)
    bl = Blended(alpha=0.2)
    t = bl.trigger(8, 8, 3)
    np.testing.assert_array_equal(t, bl.trigger(8, 8, 3))  # seeded pattern
    out = bl.apply(img)
    np.testing.assert_array_equal(out, (0.8 * 100 + 0.2 * t.astype(np.float64)).astype(np.uint8))
    # truncation, not rounding: 0.8*100 + 0.2*201 = 120.2 -> 120; 0.8*100 + 0.2*204 = 120.8 -> 120
    const = Blended(alpha=0.2)
    const.trigger = lambda h, w, c: np.full((h, w, c), 204, np.uint8)
    assert const.apply(img)[0, 0, 0] == 120
    with pytest.raises(ConfigError):
        Blended(alpha=0)


def test_run_attack_writes_complete_record(attack_record):
    folder = attack_record["folder"]
    for f in ("attack_result.pt", "info.pickle", "attack_df.csv", "attack_df_summary.csv",
              "train_poison_index_list.pickle"):
        assert (folder / f).is_file(), f
    assert not list(folder.glob(".*.tmp"))
    obj = torch.load(folder / "attack_result.pt", weights_only=False)
    check_record_format(obj, "./record/badnet_attack", "mnist")
    assert obj["model_name"] == "smallresnet" and obj["num_classes"] == 10 and obj["img_size"] == (28, 28, 1)

    _, ytr, _, yte = mnist_arrays(0)
    # BackdoorBench saves the 0/1 float indicator over the training set under this name (not an index list)
    indicator = torch_load(folder / "train_poison_index_list.pickle")
    assert isinstance(indicator, np.ndarray) and indicator.dtype == np.float64 and indicator.shape == (N_TRAIN,)
    poison = np.flatnonzero(indicator == 1)
    assert len(poison) == round(0.1 * N_TRAIN) == int(indicator.sum())
    np.testing.assert_array_equal(poison, poison_indices(ytr, 0.1, seed=3))
    tr, te = obj["bd_train"], obj["bd_test"]
    np.testing.assert_array_equal(tr["poison_indicator"], indicator)
    np.testing.assert_array_equal(tr["original_index_array"], np.arange(N_TRAIN))
    non_target = np.flatnonzero(yte != 0)
    np.testing.assert_array_equal(te["original_index_array"], non_target)  # all2one: non-target test samples
    np.testing.assert_array_equal(np.flatnonzero(te["poison_indicator"]), non_target)
    assert len(te["poison_indicator"]) == N_TEST
    for k, v in tr["bd_data_container"]["data_dict"].items():
        assert v["other_info"] == [0, int(ytr[k])]

    pngs_tr = sorted(folder.glob("bd_train_dataset/*/*.png"))
    pngs_te = sorted(folder.glob("bd_test_dataset/*/*.png"))
    assert len(pngs_tr) == len(poison) and len(pngs_te) == len(non_target)
    assert {int(p.stem) for p in pngs_tr} == set(poison.tolist())
    assert all(int(p.parent.name) == ytr[int(p.stem)] for p in pngs_tr)

    info = load_settings_file(folder / "info.pickle")
    assert info["attack"] == "badnet" and info["attack_target"] == 0 and info["pratio"] == 0.1
    assert info["attack_label_trans"] == "all2one" and info["dataset"] == "mnist" and info["epochs"] == 1
    assert info["save_path"] == "./record/badnet_attack"

    df = pd.read_csv(folder / "attack_df.csv", index_col=0)
    assert len(df) == 1
    for c in ("epoch", "train_epoch_loss_avg_over_batch", "train_acc", "train_acc_clean_only", "train_asr_bd_only",
              "train_ra_bd_only", "clean_test_loss_avg_over_batch", "bd_test_loss_avg_over_batch", "test_acc",
              "test_asr", "test_ra"):
        assert c in df.columns, c
    summ = pd.read_csv(folder / "attack_df_summary.csv", index_col=0)
    assert list(summ.index) == ["last", "valid_max", "exist_nan_value"]
    assert list(summ.columns) == list(df.columns)
    final = attack_record["final"]
    assert float(summ.loc["last", "test_acc"]) == pytest.approx(final["test_acc"])
    assert float(summ.loc["last", "test_asr"]) == pytest.approx(final["test_asr"])
    for k in ("test_acc", "test_asr", "test_ra"):
        assert 0.0 <= final[k] <= 1.0


def test_run_attack_record_loads_back_identically(attack_record):
    folder = attack_record["folder"]
    rec = load_record(folder)
    xtr, ytr, xte, yte = mnist_arrays(0)
    t = rec.tensors("bd_train")
    poison = set(np.flatnonzero(rec.bd_train.poison_indicator).tolist())
    bn = BadNets()
    for i in range(N_TRAIN):
        expected = bn.apply(xtr[i]) if i in poison else xtr[i]
        np.testing.assert_array_equal(t.x[i, 0].numpy(), expected)
        assert int(t.label[i]) == (0 if i in poison else ytr[i])
        assert int(t.original_label[i]) == ytr[i]
    te = rec.tensors("bd_test")
    assert (te.label == 0).all() and (te.original_label != 0).all()
    for j, i in enumerate(te.original_index.tolist()):
        np.testing.assert_array_equal(te.x[j, 0].numpy(), bn.apply(xte[i]))
    assert rec.settings["attack"] == "badnet"
    assert rec.baseline["test_acc"] == pytest.approx(attack_record["final"]["test_acc"])
    model = rec.build_model()
    saved = torch.load(folder / "attack_result.pt", weights_only=False)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])


def test_run_attack_refuses_to_overwrite(attack_record):
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_attack(attack_record["settings"], attack_record["folder"], progress=False)


def test_run_attack_all2all_ram_mode(tmp_path):
    root = tmp_path / "BB"
    make_mnist_layout(root / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST)
    s = AttackSettings(attack="blended", dataset="mnist", model="smallresnet", pratio=0.2, attack_label_trans="all2all",
                       epochs=1, batch_size=20, dataset_path=str(root / "data"), ram_mode=True)
    folder = root / "record" / "blend_a2a"
    run_attack(s, folder, progress=False)
    assert not (folder / "bd_train_dataset").exists()
    with pytest.raises(UntrustedFileError, match="--trust-record"):
        load_record(folder)
    rec = load_record(folder, trusted=True)
    _, ytr, xte, yte = mnist_arrays(0)
    tr = rec.bd_train.label_arrays()
    assert int(tr["poison"].sum()) == round(0.2 * N_TRAIN)
    np.testing.assert_array_equal(tr["label"][tr["poison"]], (ytr[tr["poison"]] + 1) % 10)
    np.testing.assert_array_equal(tr["label"][~tr["poison"]], ytr[~tr["poison"]])
    te = rec.tensors("bd_test")
    assert len(te) == N_TEST  # all2all: every test sample
    np.testing.assert_array_equal(te.label.numpy(), (yte + 1) % 10)
    np.testing.assert_array_equal(te.x[5, 0].numpy(), Blended().apply(xte[5]))


def test_run_attack_bad_settings(tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=10, n_test=10)
    base = dict(dataset="mnist", epochs=1, dataset_path=str(tmp_path / "data"))
    with pytest.raises(UnknownNameError, match="nope"):
        run_attack(AttackSettings(model="nope", **base), tmp_path / "record" / "a", progress=False)
    with pytest.raises(ConfigError, match="attack_target"):
        run_attack(AttackSettings(attack_target=10, **base), tmp_path / "record" / "b", progress=False)
    with pytest.raises(UnknownNameError):
        run_attack(AttackSettings(dataset="svhn", epochs=1), tmp_path / "record" / "c", progress=False)
    assert not (tmp_path / "record").exists()  # nothing written before the settings are checked
