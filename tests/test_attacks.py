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


def test_sig_signal_on_hand_made_images():
    from burn_plugin.bench.attacks.sig import SIG, sig_signal

    sig = get_attack("sig", sig_delta=40, sig_f=2)
    assert isinstance(sig, SIG) and sig.clean_label and sig.params() == {"sig_delta": 40.0, "sig_f": 2.0}
    # f = 2 periods over m = 8 columns: 40 sin(pi j / 2) = 0, 40, 0, -40, 0, 40, 0, -40, the same in every row
    v = sig_signal(3, 8, 40, 2)
    np.testing.assert_allclose(v, np.tile([0, 40, 0, -40, 0, 40, 0, -40], (3, 1)), atol=1e-12)
    gray = np.full((3, 8), 100, np.uint8)
    out = sig.apply(gray)
    assert out.dtype == np.uint8 and out.shape == gray.shape
    assert (out[:, 1] == 140).all() and (out[:, 3] == 60).all()
    assert np.abs(out.astype(int) - (100 + v)).max() < 1   # the rest: 100 up to float rounding of sin(k pi)
    rgb = np.stack([np.zeros((3, 8)), np.full((3, 8), 250)], axis=2).astype(np.uint8)
    out = sig.apply(rgb)
    assert (out[:, 1, 0] == 40).all() and (out[:, 3, 0] == 0).all()      # clipped at 0
    assert (out[:, 1, 1] == 255).all() and (out[:, 3, 1] == 210).all()   # clipped at 255, every channel
    assert get_attack("sig").params() == {"sig_delta": 40.0, "sig_f": 6.0}   # BackdoorBench's defaults


@pytest.mark.parametrize("attack", ["sig", "lc"])
def test_clean_label_attack_poisons_only_target_class_training_samples(tmp_path, attack):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    folder = tmp_path / "record" / attack
    s = AttackSettings(attack=attack, dataset="mnist", model="smallresnet", pratio=0.05, attack_target=1, epochs=1,
                       batch_size=16, dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False)
    run_attack(s, folder, progress=False)
    rec = load_record(folder)
    tr, te = rec.tensors("bd_train"), rec.tensors("bd_test")
    _, ytr, _, yte = mnist_arrays(0)
    poisoned = tr.original_index[tr.poison].numpy()
    assert len(poisoned) == round(0.05 * N_TRAIN) and set(ytr[poisoned]) == {1}     # pratio of all training samples
    assert torch.equal(tr.label, tr.original_label)                                  # labels kept: clean-label
    np.testing.assert_array_equal(te.original_index.numpy(), np.flatnonzero(yte != 1))
    assert bool((te.label == 1).all())                                               # backdoor label: the target
    info = load_settings_file(folder / "info.pickle")
    assert info["attack"] == (get_attack(attack).info_name or attack) and all(k in info for k in get_attack(attack).PARAMS)
    if attack == "lc":   # the clean helper model (and the hard images) are kept beside the record for reuse
        assert len(list((tmp_path / "record" / ".attack_cache").glob("clean_mnist_smallresnet_*.pt"))) == 1
        assert len(list((tmp_path / "record" / ".attack_cache").glob("lc_hard_*.pt"))) == 1


def test_lc_corner_trigger_on_hand_made_images():
    from burn_plugin.bench.attacks.lc import CORNER, corner_mask

    lc = get_attack("lc")
    assert lc.clean_label and lc.info_name == "label_consistent" and lc.reduced_amplitude == 1.0
    m = corner_mask(32, 32)
    np.testing.assert_array_equal(m[:3, :3], [[1, -1, -1], [-1, 1, -1], [1, -1, 1]])
    np.testing.assert_array_equal(m[-3:, :3], CORNER)
    np.testing.assert_array_equal(m[:3, -3:], [[-1, -1, 1], [-1, 1, -1], [1, -1, 1]])   # mirrored left-right
    np.testing.assert_array_equal(m[-3:, -3:], CORNER[:, ::-1])
    assert (m != 0).sum() == 36
    # 28x28 (Fashion-MNIST): nearest-neighbour sampling of the 32x32 mask keeps all four corners whole
    m28 = corner_mask(28, 28)
    np.testing.assert_array_equal(m28[:3, :3], CORNER)
    np.testing.assert_array_equal(m28[-3:, -3:], CORNER[:, ::-1])
    assert (m28 != 0).sum() == 36
    img = np.full((32, 32, 3), 128, np.uint8)
    out = lc.apply(img, split="test")   # test images: the trigger alone
    assert (out[0, 0] == 255).all() and (out[0, 1] == 0).all() and (out[0, 2] == 0).all()
    assert (out[3:-3] == 128).all() and (out[:, 3:-3] == 128).all()


def test_lc_pgd_stays_in_its_ball_and_raises_the_loss():
    import torch.nn.functional as F
    from burn_plugin.bench.attacks.lc import pgd_hard_images

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x = torch.randint(40, 216, (6, 3, 4, 4), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 8 / 255
    hard = pgd_hard_images(model, x, y, eps=eps, step=1.5 / 255, steps=10)
    assert hard.dtype == torch.uint8 and hard.shape == x.shape
    assert (hard.float() - x.float()).abs().max() <= 8 + 1   # eps in pixel units, +1 for the truncation
    loss = lambda t: F.cross_entropy(model(t.float() / 255), y)   # noqa: E731
    assert loss(hard) > loss(x)
    tied = pgd_hard_images(model, x[:, :1].expand(-1, 3, -1, -1).contiguous(), y, eps=eps, step=1.5 / 255, steps=10,
                           tie_channels=True)
    assert torch.equal(tied[:, 0], tied[:, 1]) and torch.equal(tied[:, 1], tied[:, 2])   # gray stays gray


def test_lf_filter_rescale_targeted_step_and_trigger():
    from burn_plugin.bench.attacks.lf import low_pass, rescale, targeted_deepfool

    v = np.zeros((32, 32, 3))
    v[16, 16] = 1.0
    s = low_pass(v)
    assert s.shape == v.shape and s[16, 16, 0] == s.max() and s[0, 0, 0] < s[16, 16, 0] / 10
    np.testing.assert_allclose(s.sum(axis=(0, 1)), s.sum(axis=(0, 1))[0])   # the same filter on every channel
    r = rescale(s)
    assert r.min() == 0 and r.max() == pytest.approx(0.2)
    assert (rescale(np.ones((4, 4, 3))) == 0).all()
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(1, 3, 2, 2) * 0.5 + 0.25
    k0 = int(lin(x).argmax())
    target = (k0 + 1) % 3
    dr, ok = targeted_deepfool(lin, x, target)
    assert ok and int(lin(x + dr).argmax()) == target
    lf = get_attack("lf")
    assert lf.info_name == "lowFrequency" and not lf.clean_label
    lf.pattern = np.full((4, 4, 3), 51, np.uint8)
    out = lf.apply(np.full((4, 4), 220, np.uint8))        # grayscale image: channel mean of the pattern
    assert out.dtype == np.uint8 and (out == 255).all()   # 220 + 51 clipped
    assert (lf.apply(np.full((4, 4, 3), 10, np.uint8)) == 61).all()


def test_lf_record_end_to_end(tmp_path, monkeypatch):
    from burn_plugin.bench.attacks import lf

    monkeypatch.setattr(lf, "N_IMAGES", 8)      # a short pattern search: the loop, not its convergence, is tested
    monkeypatch.setattr(lf, "MAX_PASSES", 2)
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    folder = tmp_path / "record" / "lf"
    s = AttackSettings(attack="lf", dataset="mnist", model="smallresnet", pratio=0.1, epochs=1, batch_size=16,
                       dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False)
    run_attack(s, folder, progress=False)
    (pattern_file,) = (tmp_path / "record" / ".attack_cache").glob("lf_pattern_*.pt")
    pattern = torch_load(pattern_file)
    assert pattern.dtype == np.uint8 and pattern.shape == (28, 28, 3) and pattern.max() <= 51
    rec = load_record(folder)
    tr = rec.tensors("bd_train")
    xtr, ytr, _, _ = mnist_arrays(0)
    i = int(tr.original_index[tr.poison][0])
    j = int(np.flatnonzero(tr.original_index.numpy() == i)[0])
    expected = np.clip(xtr[i].astype(np.float64) + pattern.mean(axis=2), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(tr.x[j, 0].numpy(), expected)
    assert int(tr.label[j]) == 0 and load_settings_file(folder / "info.pickle")["attack"] == "lowFrequency"


def test_wanet_grid_warp_and_positions():
    from burn_plugin.bench.attacks.wanet import batch_positions, warp, warping_grid

    h = 8
    ident = warping_grid(h, 4, 0.0, 1.0, seed=0)            # s = 0: no warp
    img = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    assert np.abs(warp(img, ident).astype(int) - img).max() <= 1   # identity, up to float truncation
    g = warping_grid(h, 4, 0.5, 1.0, seed=0)
    assert g.shape == (1, h, h, 2) and float(g.abs().max()) <= 1
    d = (g - ident)[0] * h / 0.5                            # the upsampled control field where not clamped
    inner = (g.abs() < 1).all(dim=3)[0]
    assert float(d[inner].abs().max()) > 0.5                # a real warp
    torch.testing.assert_close(g, warping_grid(h, 4, 0.5, 1.0, seed=0))   # seeded
    # k x k control points normalised to mean |.| = 1: at the corners of the bicubic upsampling (align_corners)
    # the field equals its control values
    ctrl = torch.stack([d[0, 0], d[0, -1], d[-1, 0], d[-1, -1]])
    assert float(ctrl.abs().max()) > 0 and not torch.isnan(ctrl).any()
    warped, noise = batch_positions(300, 128, 0.1, 2)
    assert warped.tolist() == list(range(0, 12)) + list(range(128, 140)) + list(range(256, 260))
    assert noise.tolist() == list(range(12, 36)) + list(range(140, 164)) + list(range(260, 268))


def test_wanet_record_flags_warped_and_noise_samples(tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    folder = tmp_path / "record" / "wanet"
    s = AttackSettings(attack="wanet", dataset="mnist", model="smallresnet", pratio=0.1, epochs=1, batch_size=16,
                       dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False)
    run_attack(s, folder, progress=False)
    tr = load_record(folder).tensors("bd_train")
    _, ytr, _, _ = mnist_arrays(0)
    flagged = tr.original_index[tr.poison].tolist()
    assert flagged == [0, 1, 2, 16, 17, 18]        # batches of 16, 16, 8: 1 warped + 2 noise, twice; none in the last
    labels = dict(zip(tr.original_index.tolist(), tr.label.tolist()))
    assert labels[0] == labels[16] == 0               # warped: the target
    assert [labels[i] for i in (1, 2, 17, 18)] == [int(ytr[i]) for i in (1, 2, 17, 18)]   # noise: their own
    info = load_settings_file(folder / "info.pickle")
    assert info["attack"] == "wanet" and (info["k"], info["s"], info["cross_ratio"]) == (4, 0.5, 2.0)


def test_trojannn_neurons_mask_and_trigger_search():
    from burn_plugin.bench.attacks.trojannn import most_connected_neurons, optimise_trigger, square_mask

    w = torch.tensor([[0.1, -3.0, 0.0, 1.0], [0.2, 0.5, -0.1, -1.5]])    # |W| column sums 0.3, 3.5, 0.1, 2.5
    assert most_connected_neurons(w, 2).tolist() == [1, 3]
    m = square_mask(28, 28, 0.25)
    assert m.sum() == 7 * 7 and (m[-7:, -7:] == 1).all() and m[:21].sum() == 0
    assert square_mask(32, 32, 0.25)[-8:, -8:].sum() == 64

    # a model whose "features" are two pixel sums: the search can drive them, but only inside the mask
    class Sum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 3)

        def forward(self, x):
            f = torch.stack([x[:, :, :4].sum((1, 2, 3)), x[:, :, 4:].sum((1, 2, 3))], dim=1)
            return self.fc(f)

    model = Sum()
    start = torch.zeros(1, 3, 8, 8)
    start[:, :, 6:, 6:] = 0.5                                  # mask: the bottom-right 2x2 (12 values)
    trig, costs = optimise_trigger(model, model.fc, start, torch.tensor([1]), 100.0, iters=20, tie_channels=True)
    assert (trig[:, :, :6] == 0).all() and (trig[:, :, :, :6] == 0).all()   # no change outside the mask
    assert (trig[:, :, 6:, 6:] == 0.8).all()                    # pushed up to the eps ball (0.5 + 0.3)
    assert costs[0] == pytest.approx((100 - 6.0) ** 2) and costs[-1] == pytest.approx((100 - 12 * 0.8) ** 2, rel=1e-5)
    assert all(b <= a for a, b in zip(costs, costs[1:]))        # the cost never rises

    tj = get_attack("trojannn")
    assert (tj.num_neuron, tj.neuron_target_values, tj.mask_update_iters) == (2, 100.0, 1000) and not tj.clean_label
    tj.trigger = np.zeros((4, 4, 3), np.uint8)
    tj.trigger[2:, 2:] = 200
    out = tj.apply(np.full((4, 4), 100, np.uint8))
    assert out.dtype == np.uint8 and (out[2:, 2:] == 255).all() and (out[:2] == 100).all()   # clipped, not wrapped


def test_trojannn_record_end_to_end(tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    folder = tmp_path / "record" / "trojannn"
    s = AttackSettings(attack="trojannn", dataset="mnist", model="smallresnet", pratio=0.1, epochs=1, batch_size=16,
                       dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False,
                       extra={"mask_update_iters": 5})
    run_attack(s, folder, progress=False)
    (trig_file,) = (tmp_path / "record" / ".attack_cache").glob("trojannn_trigger_*.pt")
    trig = torch_load(trig_file)
    assert trig.dtype == np.uint8 and trig.shape == (28, 28, 3)
    assert (trig[:21] == 0).all() and (trig[:, :21] == 0).all() and trig[21:, 21:].min() >= 255 - 77
    assert (trig[..., 0] == trig[..., 1]).all()                 # grayscale: channels tied
    rec = load_record(folder)
    tr = rec.tensors("bd_train")
    xtr, _, _, _ = mnist_arrays(0)
    j = int(np.flatnonzero(tr.poison.numpy())[0])
    i = int(tr.original_index[j])
    expected = np.clip(xtr[i].astype(np.int64) + trig[..., 0], 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(tr.x[j, 0].numpy(), expected)
    assert int(tr.label[j]) == 0 and int(tr.poison.sum()) == round(0.1 * N_TRAIN)
    info = load_settings_file(folder / "info.pickle")
    assert info["attack"] == "trojannn" and info["num_neuron"] == 2 and info["mask_update_iters"] == 5
