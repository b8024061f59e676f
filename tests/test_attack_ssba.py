"""SSBA: the encoder/decoder, its losses, the poison choice and the record run_attack writes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from burn_plugin.bench.attacks import AttackSettings, get_attack, poison_indices, run_attack
from burn_plugin.bench.attacks import ssba  # registers "ssba" (the package __init__ does not import it yet)
from burn_plugin.bench.records import load_record
from burn_plugin.errors import ConfigError
from burn_plugin.fileio import load_settings_file, torch_load
from conftest import N_TEST, N_TRAIN, mnist_arrays
from synthetic import class_images, make_mnist_layout


def test_ssba_encoder_decoder_shapes_and_residual_bound():
    torch.manual_seed(0)
    for c, h, w in ((1, 28, 28), (3, 30, 26)):           # grayscale, and RGB of a size not divisible by 4
        enc, dec = ssba.Encoder(c, h, w, 8, bound=4 / 255), ssba.Decoder(c, h, w, 8)
        x = torch.rand(5, c, h, w)
        bits = torch.randint(0, 2, (5, 8)).float()
        with torch.no_grad():
            r = enc(x, bits)
        assert r.shape == (5, c, h, w) and float(r.abs().max()) <= 4 / 255   # bound * tanh
        assert dec(x).shape == (5, 8)
        u8 = (torch.rand(5, 3, h, w) * 255).to(torch.uint8)
        out = ssba.encode_images(enc, u8, bits[0], batch_size=2)
        assert out.dtype == torch.uint8 and out.shape == (5, c, h, w)
        # clean values are whole grey levels and |residual| < 4 levels, so rounding moves a pixel by <= 4
        assert int((out.int() - u8[:, :c].int()).abs().max()) <= 4


def test_ssba_loss_ramp_and_stats_closed_form():
    w = ssba.image_loss_weight
    assert [w(t, 10.0, 5, 10) for t in (0, 5, 10, 15, 100)] == [0.0, 0.0, 5.0, 10.0, 10.0]
    assert [w(t, 2.0, 3, 0) for t in (2, 3)] == [0.0, 2.0]
    logits = torch.zeros(2, 4)                       # sigmoid 1/2: BCE = ln 2 whatever the bits
    bits = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    clean = torch.full((2, 1, 3, 3), 0.5)
    total, bce, l2 = ssba.stego_loss(logits, bits, clean + 0.1, clean, 3.0)
    assert bce == pytest.approx(math.log(2), rel=1e-6) and l2 == pytest.approx(0.01, rel=1e-5)
    assert float(total) == pytest.approx(math.log(2) + 3.0 * 0.01, rel=1e-5)
    # reads [[1, 0, 1, 0], [1, 1, 0, 0]]: 2 + 4 of the 8 bits right
    assert ssba.bit_accuracy(torch.tensor([[2.0, -1, 3, -4], [1, 1, -2, -5]]), bits) == 6 / 8
    a = torch.full((2, 1, 4, 4), 100, dtype=torch.uint8)
    st = ssba.residual_stats(a, a + 5)
    assert st["mean_abs"] == st["max_abs"] == 5.0 and st["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 25))
    s = ssba.fixed_secret(32, 3)
    assert s.shape == (32,) and set(s.tolist()) <= {0.0, 1.0} and torch.equal(s, ssba.fixed_secret(32, 3))
    assert not torch.equal(s, ssba.fixed_secret(32, 4))


def test_ssba_short_training_reads_the_secret_from_sample_specific_residuals():
    x, _ = class_images(80, 16, 16, 1, 10, seed=0)
    data = torch.from_numpy(x[:, None].copy())            # uint8 (80, 1, 16, 16)
    enc, dec, hist = ssba.train_stego(lambda idx: data[idx], np.arange(48), channels=1, height=16, width=16,
                                      bits=4, bound=64 / 255, steps=150, batch_size=16, lr=3e-3, l2_scale=1.0,
                                      l2_wait=100, l2_ramp=50, seed=0, log_every=50)
    assert [h[0] for h in hist] == [0, 50, 100, 149]
    secret = torch.tensor([1.0, 0.0, 0.0, 1.0])
    held_out = data[48:]                                  # 32 images the pair never saw
    encoded = ssba.encode_images(enc, held_out, secret)
    residual = encoded.int() - held_out.int()
    assert int(residual.abs().max()) <= 64
    assert (residual[0] != residual[1]).any()             # sample-specific: two images, two residuals
    # 128 bits read; by chance the share right has mean 1/2 and standard deviation 1/sqrt(4 * 128) = 0.044,
    # so 0.75 lies 5.6 standard deviations above chance
    assert ssba.decode_accuracy(dec, encoded, secret) >= 0.75


def test_ssba_poisons_pratio_share_dirty_label():
    att = get_attack("ssba")
    assert att.info_name == "SSBA" and not att.clean_label and att.secret_bits == 32
    _, ytr, _, _ = mnist_arrays(0)
    s = AttackSettings(attack="ssba", dataset="mnist", pratio=0.15, random_seed=2)
    visible = np.arange(N_TRAIN)
    idx = att.train_indices(visible, ytr, s)
    assert len(idx) == round(0.15 * N_TRAIN) and np.array_equal(idx, poison_indices(ytr, 0.15, 2))
    assert all(att.train_label(int(i), int(ytr[i]), 0) == 0 for i in idx)


def test_ssba_record_end_to_end(tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    folder = tmp_path / "record" / "ssba"
    extra = {"encoder_steps": 4, "secret_bits": 8, "encoder_batch_size": 8, "residual_bound": 12.0}
    s = AttackSettings(attack="ssba", dataset="mnist", model="smallresnet", pratio=0.1, epochs=1, batch_size=16,
                       dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False, extra=extra)
    run_attack(s, folder, progress=False)
    (nets_file,) = (tmp_path / "record" / ".attack_cache").glob("ssba_nets_*.pt")
    nets = torch_load(nets_file)
    enc = ssba.Encoder(1, 28, 28, 8, 12 / 255)
    enc.load_state_dict(nets["encoder"])
    secret = ssba.fixed_secret(8, 2)
    xtr, ytr, xte, yte = mnist_arrays(0)

    tr = load_record(folder).tensors("bd_train")
    chosen = poison_indices(ytr, 0.1, 2)
    assert tr.original_index[tr.poison].tolist() == chosen.tolist() and len(chosen) == round(0.1 * N_TRAIN)
    clean = torch.from_numpy(xtr[chosen][:, None].copy())
    expected = ssba.encode_images(enc.eval(), clean, secret)
    rows = [int(np.flatnonzero(tr.original_index.numpy() == i)[0]) for i in chosen]
    for k, j in enumerate(rows):
        assert torch.equal(tr.x[j, 0], expected[k, 0]) and torch.equal(tr.x[j, 1], tr.x[j, 0])  # tied channels
        assert int(tr.label[j]) == 0
    assert int((tr.x[rows, 0].int() - clean[:, 0].int()).abs().max()) <= 12
    te = load_record(folder).tensors("bd_test")
    assert te.original_index.tolist() == np.flatnonzero(yte != 0).tolist() and bool(te.poison.all())
    assert set(te.label.tolist()) == {0}
    info = load_settings_file(folder / "info.pickle")
    assert info["attack"] == "SSBA" and info["secret_bits"] == 8 and info["encoder_steps"] == 4
    stats = info["attack_stats"]            # what the encoder achieved, kept with the record
    assert 0 <= stats["bit_acc_test"] <= 1 and 0 <= stats["residual_max_abs"] <= 12


def test_ssba_replacement_arrays(tmp_path):
    """BackdoorBench's pre-encoded splits (whole split, by sample index) are used as they are."""
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    xtr, ytr, xte, _ = mnist_arrays(0)
    rep_tr, rep_te = (255 - xtr).astype(np.uint8), (255 - xte)[..., None].astype(np.uint8)   # (N, H, W[, 1])
    np.save(tmp_path / "tr.npy", rep_tr)
    np.save(tmp_path / "te.npy", rep_te)
    folder = tmp_path / "record" / "ssba_rep"
    extra = {"attack_train_replace_imgs_path": str(tmp_path / "tr.npy"),
             "attack_test_replace_imgs_path": str(tmp_path / "te.npy")}
    s = AttackSettings(attack="ssba", dataset="mnist", model="smallresnet", pratio=0.1, epochs=1, batch_size=16,
                       dataset_path=str(tmp_path / "data"), random_seed=2, eval_every_epoch=False, extra=extra)
    run_attack(s, folder, progress=False)
    rec = load_record(folder)
    tr, te = rec.tensors("bd_train"), rec.tensors("bd_test")
    for i in poison_indices(ytr, 0.1, 2):
        j = int(np.flatnonzero(tr.original_index.numpy() == i)[0])
        assert torch.equal(tr.x[j, 0], torch.from_numpy(rep_tr[i]))
    assert torch.equal(te.x[0, 0], torch.from_numpy(rep_te[int(te.original_index[0]), :, :, 0]))
    with pytest.raises(ConfigError, match="both"):
        run_attack(AttackSettings(**{**s.__dict__, "extra": {"attack_train_replace_imgs_path": str(tmp_path / "tr.npy")}}),
                   tmp_path / "record" / "x", progress=False)
    np.save(tmp_path / "short.npy", rep_tr[:5])
    with pytest.raises(ConfigError, match="expected 40 images"):
        run_attack(AttackSettings(**{**s.__dict__, "extra": {**extra, "attack_train_replace_imgs_path":
                                                            str(tmp_path / "short.npy")}}),
                   tmp_path / "record" / "y", progress=False)
