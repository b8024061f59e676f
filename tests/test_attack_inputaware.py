"""The input-aware dynamic attack: its losses and nets on hand-made tensors, which samples it changes, and
a small record made end to end on synthetic mnist data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from burn_plugin.bench.attacks import AttackSettings, get_attack, run_attack
from burn_plugin.bench.attacks import inputaware as ia   # importing the module registers the attack
from burn_plugin.bench.records import load_record
from burn_plugin.errors import EmptySelectionError
from burn_plugin.fileio import load_settings_file, torch_load
from conftest import N_TEST, N_TRAIN, mnist_arrays
from synthetic import make_mnist_layout

GRAY = ((0.5,) * 3, (0.5,) * 3)


def test_inputaware_diversity_norm_threshold_and_composition():
    x1 = torch.zeros(2, 1, 2, 2)
    x2 = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.4)])    # rms distances 1.0 and 0.4
    p1 = torch.zeros(2, 3, 2, 2)
    p2 = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), 0.1)])   # 0.5 and 0.1
    assert float(ia.diversity_loss(x1, x2, p1, p2, eps=0.0)) == pytest.approx((1.0 / 0.5 + 0.4 / 0.1) / 2)
    assert float(ia.diversity_loss(x1, x2, p1, p1, eps=1e-7)) == pytest.approx(0.7e7, rel=1e-4)   # same patterns
    x1[1, 0, 0, 0] = 1.0          # one pixel of four differs by 1: rms = sqrt(1/4)
    assert float(ia.diversity_loss(x1[1:], torch.zeros(1, 1, 2, 2), p2[:1], p1[:1], eps=0)) == pytest.approx(1.0)

    assert float(ia.norm_loss(torch.full((2, 1, 4, 4), 0.02), 0.032)) == 0       # below the density
    assert float(ia.norm_loss(torch.full((2, 1, 4, 4), 0.032), 0.032)) == 0
    assert float(ia.norm_loss(torch.full((2, 1, 4, 4), 0.5), 0.032)) == pytest.approx(0.468)
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, 0] = 1.0           # one value of 16 above the density
    assert float(ia.norm_loss(m, 0.032)) == pytest.approx((1 - 0.032) / 16)

    t = ia.threshold(torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0]))
    assert float(t[0]) < 1e-4 and float(t[-1]) > 1 - 1e-4 and float(t[2]) == pytest.approx(0.5)
    assert bool((t[1:] > t[:-1]).all())

    x = torch.rand(2, 3, 5, 5)
    g = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(ia.compose(x, g, torch.zeros(2, 1, 5, 5)), x)
    torch.testing.assert_close(ia.compose(x, g, torch.ones(2, 1, 5, 5)), g)
    torch.testing.assert_close(ia.compose(x, g, torch.full((2, 1, 5, 5), 0.5)), (x + g) / 2)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 30)])
def test_inputaware_nets_keep_the_image_size_and_range(channels, size):
    torch.manual_seed(0)
    g, m = ia.make_nets(channels, *GRAY)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        p, k = g(x), m(x)
    assert p.shape == x.shape and k.shape == (2, 1, size, size)
    assert float(p.min()) >= 0 and float(p.max()) <= 1 and float(k.min()) >= 0 and float(k.max()) <= 1
    assert sum(q.numel() for q in g.parameters()) < (50_000 if channels == 1 else 800_000)


def test_inputaware_positions_and_partners():
    bd, cross = ia.batch_positions(40, 16, 0.125, 1.0, seed=0)   # batches 16, 16, 8: 2, 2 and 1 backdoor samples
    assert bd.tolist() == [0, 1, 16, 17, 32] and cross.tolist() == [2, 3, 18, 19, 33]
    bd, cross = ia.batch_positions(40, 16, 0.125, 2.0, seed=0)
    assert bd.tolist() == [0, 1, 16, 17, 32] and cross.tolist() == [2, 3, 4, 5, 18, 19, 20, 21, 33, 34]
    bd, cross = ia.batch_positions(300, 128, 0.1, 1.0, seed=0)   # 12, 12 and int(4.4) = 4
    assert len(bd) == 28 and len(cross) == 28
    # below one sample a batch: one with probability pratio * b, drawn with the seed
    bd, cross = ia.batch_positions(16 * 200, 16, 0.05, 1.0, seed=1)
    assert 0.65 < len(bd) / 200 < 0.95 and len(cross) == len(bd)
    assert set((bd % 16).tolist()) == {0} and set((cross % 16).tolist()) == {1}
    assert ia.batch_positions(16 * 200, 16, 0.05, 1.0, seed=1)[0].tolist() == bd.tolist()
    partners = [ia.partner_position(5, 10, index=i, seed=0) for i in range(200)]
    assert 5 not in partners and set(partners) == set(range(10)) - {5}
    assert partners == [ia.partner_position(5, 10, index=i, seed=0) for i in range(200)]


def test_inputaware_train_indices_and_labels():
    a = get_attack("inputaware")
    assert (a.cross_ratio, a.clean_train_epochs, a.mask_density, a.lambda_norm) == (1.0, 1, 0.032, 100.0)
    visible = np.arange(100, 140)
    s = AttackSettings(attack="inputaware", pratio=0.125, batch_size=16, random_seed=3)
    idx = a.train_indices(visible, np.zeros(40, dtype=np.int64), s)
    assert idx.tolist() == [100, 101, 102, 103, 116, 117, 118, 119, 132, 133]
    assert sorted(a.cross) == [102, 103, 118, 119, 133]
    assert all(p in visible and p != i for i, p in a.cross.items())
    assert [a.train_label(i, 7, 0) for i in idx] == [0, 0, 7, 7, 0, 0, 7, 7, 0, 7]
    b = get_attack("inputaware", cross_ratio=2)
    idx = b.train_indices(visible, np.zeros(40, dtype=np.int64), s)
    assert len(idx) == 15 and len(b.cross) == 10
    with pytest.raises(EmptySelectionError):
        get_attack("inputaware").train_indices(np.arange(4), np.zeros(4, dtype=np.int64),
                                               AttackSettings(pratio=0.01, batch_size=4))


def test_inputaware_apply_is_input_aware():
    a = get_attack("inputaware")
    with pytest.raises(RuntimeError, match="prepare"):
        a.apply(np.zeros((28, 28), np.uint8))
    torch.manual_seed(0)
    a.netG, a.netM = ia.make_nets(1, *GRAY)
    xtr, _, _, _ = mnist_arrays(0)
    img_a, img_b = xtr[0], xtr[1]                          # (28, 28) gray
    out = a.apply(img_a, index=0, split="test")
    assert out.shape == img_a.shape and out.dtype == np.uint8 and (out != img_a).any()
    np.testing.assert_array_equal(out, a.apply(img_a.copy(), index=0, split="train"))   # not cross: own trigger
    cross = ia.poison_image(img_a, a.netG, a.netM, source=img_b)    # image A, trigger made from image B
    assert (cross != out).any()
    # the trigger itself differs between images: pattern and mask of A and B
    with torch.no_grad():
        xa, xb = (torch.from_numpy(i.astype(np.float32) / 255)[None, None] for i in (img_a, img_b))
        assert not torch.allclose(a.netG(xa), a.netG(xb)) and not torch.allclose(a.netM(xa), a.netM(xb))
    a.cross = {5: 1}
    a._train_image = lambda i: {1: img_b}[i]
    np.testing.assert_array_equal(a.apply(img_a, index=5, split="train"), cross)
    np.testing.assert_array_equal(a.apply(img_a, index=5, split="test"), out)   # test images: their own trigger
    torch.manual_seed(0)
    a.netG, a.netM = ia.make_nets(3, *GRAY)
    rgb = np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    out = a.apply(rgb, index=0, split="test")
    assert out.shape == rgb.shape and out.dtype == np.uint8 and (out != rgb).any()


def _nets_from_cache(cache):
    (mask_file,) = cache.glob("inputaware_mask_*.pt")
    (gen_file,) = cache.glob("inputaware_gen_*.pt")
    g, m = ia.make_nets(1, *GRAY)
    m.load_state_dict(torch_load(mask_file))
    g.load_state_dict(torch_load(gen_file))
    return g.eval(), m.eval(), mask_file, gen_file


def test_inputaware_record_end_to_end(tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    folder = tmp_path / "record" / "inputaware"
    s = AttackSettings(attack="inputaware", dataset="mnist", model="smallresnet", pratio=0.125, epochs=1,
                       batch_size=16, dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False,
                       extra={"clean_train_epochs": 2, "generator_epochs": 1})
    run_attack(s, folder, progress=False)
    rec = load_record(folder)
    tr, te = rec.tensors("bd_train"), rec.tensors("bd_test")
    xtr, ytr, xte, yte = mnist_arrays(0)
    flagged = tr.original_index[tr.poison].tolist()
    assert flagged == [0, 1, 2, 3, 16, 17, 18, 19, 32, 33]    # batches 16, 16, 8: 2 (1) backdoor + as many cross
    labels = dict(zip(tr.original_index.tolist(), tr.label.tolist()))
    assert [labels[i] for i in (0, 1, 16, 17, 32)] == [0] * 5                             # backdoor: the target
    assert [labels[i] for i in (2, 3, 18, 19, 33)] == [int(ytr[i]) for i in (2, 3, 18, 19, 33)]   # cross: their own
    info = load_settings_file(folder / "info.pickle")
    assert info["attack"] == "inputaware" and (info["clean_train_epochs"], info["generator_epochs"]) == (2, 1)
    assert info["cross_ratio"] == 1.0 and info["mask_density"] == 0.032

    g, m, mask_file, gen_file = _nets_from_cache(tmp_path / "record" / ".attack_cache")
    row = {int(i): j for j, i in enumerate(tr.original_index.tolist())}
    for i in (0, 32):                              # backdoor: the image's own trigger
        np.testing.assert_array_equal(tr.x[row[i], 0].numpy(), ia.poison_image(xtr[i], g, m))
    for i in (2, 33):                              # cross: the trigger of the seeded partner
        p = ia.partner_position(i, N_TRAIN, i, 2)
        np.testing.assert_array_equal(tr.x[row[i], 0].numpy(), ia.poison_image(xtr[i], g, m, source=xtr[p]))
        assert (tr.x[row[i], 0].numpy() != ia.poison_image(xtr[i], g, m)).any()
    np.testing.assert_array_equal(tr.x[row[5], 0].numpy(), xtr[5])    # clean
    assert bool(te.poison.all()) and len(te.x) == int((yte != 0).sum())
    j = int(te.original_index[0])
    np.testing.assert_array_equal(te.x[0, 0].numpy(), ia.poison_image(xte[j], g, m))

    # a second record on the same data reuses the trained generators
    stamps = (mask_file.stat().st_mtime_ns, gen_file.stat().st_mtime_ns)
    run_attack(s, tmp_path / "record" / "again", progress=False)
    assert (mask_file.stat().st_mtime_ns, gen_file.stat().st_mtime_ns) == stamps
    tr2 = load_record(tmp_path / "record" / "again").tensors("bd_train")
    torch.testing.assert_close(tr2.x, tr.x)
    assert len(list((tmp_path / "record" / ".attack_cache").glob("inputaware_*.pt"))) == 2
    # another generator setting trains a new pattern generator on the same (reused) mask generator
    s.extra = {"clean_train_epochs": 2, "generator_epochs": 2}
    run_attack(s, tmp_path / "record" / "longer", progress=False)
    assert mask_file.stat().st_mtime_ns == stamps[0]
    assert len(list((tmp_path / "record" / ".attack_cache").glob("inputaware_gen_*.pt"))) == 2
