"""Bad input on the command line: one line ``error: ...`` on stderr, exit code 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import torch

from burn_plugin.cli import main
from conftest import N_TEST, N_TRAIN, small_state_dict
from synthetic import make_mnist_layout


def run(capsys, *argv):
    rc = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, err, *needles, code=2):
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_record_folder(capsys, tmp_path):
    rc, _, err = run(capsys, "info", tmp_path / "nope")
    assert_one_error_line(rc, err, str(tmp_path / "nope"))
    rc, _, err = run(capsys, "defend", "--attack_folder", tmp_path / "nope")
    assert_one_error_line(rc, err, "nope")
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "info", tmp_path / "empty")
    assert_one_error_line(rc, err, "attack_result.pt")


def test_truncated_record_file(capsys, hand_record):
    data = hand_record.pt.read_bytes()
    hand_record.pt.write_bytes(data[: len(data) // 2])
    rc, _, err = run(capsys, "info", hand_record.folder)
    assert_one_error_line(rc, err, "corrupt or truncated")
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder)
    assert_one_error_line(rc, err, "corrupt or truncated")


def test_truncated_record_in_a_real_process(hand_record):
    data = hand_record.pt.read_bytes()
    hand_record.pt.write_bytes(data[:100])
    p = subprocess.run([sys.executable, "-m", "burn_plugin.cli", "info", str(hand_record.folder)],
                       capture_output=True, text=True, timeout=120)
    assert_one_error_line(p.returncode, p.stderr, "attack_result.pt")
    assert p.stdout == ""


def test_unknown_model_name(capsys, tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=10, n_test=10)
    rc, _, err = run(capsys, "attack", "--model", "nope", "--dataset", "mnist", "--dataset_path", tmp_path / "data",
                     "--epochs", 1, "--out", tmp_path / "record" / "x")
    assert_one_error_line(rc, err, "nope", "preactresnet18")
    assert not (tmp_path / "record" / "x").exists()


def test_unknown_dataset_name(capsys, tmp_path, hand_record):
    rc, _, err = run(capsys, "attack", "--dataset", "svhn", "--epochs", 1, "--out", tmp_path / "r")
    assert_one_error_line(rc, err, "svhn", "cifar10")
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--dataset", "svhn")
    assert_one_error_line(rc, err, "svhn")


def test_record_num_classes_disagrees_with_dataset(capsys, hand_record_factory):
    hr = hand_record_factory(num_classes=5)
    rc, _, err = run(capsys, "info", hr.folder)
    assert_one_error_line(rc, err, "5 classes", "10")


def test_model_class_count_disagrees_with_record(capsys, hand_record):
    obj = dict(hand_record.obj, model=small_state_dict(5))  # 5-class weights in a 10-class record
    torch.save(obj, hand_record.pt)
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--device", "cpu")
    assert_one_error_line(rc, err, "class-count", "linear.weight")
    assert not (hand_record.folder / "defense").exists()


def test_defend_model_that_does_not_fit_the_record(capsys, hand_record):
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--model", "preactresnet18")
    assert_one_error_line(rc, err, "preactresnet18")
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--model", "nope")
    assert_one_error_line(rc, err, "nope")


def test_missing_data_folder(capsys, hand_record_factory, tmp_path):
    hr = hand_record_factory(with_data=False)
    rc, _, err = run(capsys, "info", hr.folder)
    assert_one_error_line(rc, err, str(hr.root / "data" / "mnist"), "MNIST/raw")
    rc, _, err = run(capsys, "attack", "--dataset", "mnist", "--dataset_path", tmp_path / "nodata", "--epochs", 1,
                     "--out", tmp_path / "r")
    assert_one_error_line(rc, err, str(tmp_path / "nodata" / "mnist"))


def test_untrusted_ram_record(capsys, hand_record_factory):
    hr = hand_record_factory(mode="ram")
    rc, _, err = run(capsys, "info", hr.folder)
    assert_one_error_line(rc, err, "--trust-record")
    rc, _, err = run(capsys, "defend", "--attack_folder", hr.folder)
    assert_one_error_line(rc, err, "--trust-record")
    rc, out, err = run(capsys, "info", hr.folder, "--trust-record")
    assert rc == 0 and "error" not in err
    assert f"bd_train:     {N_TRAIN} samples, 6 poisoned" in out
    assert f"bd_test:      {len(hr.test_poison)} samples" in out


def test_untrusted_ram_record_in_a_real_process(hand_record_factory):
    hr = hand_record_factory(mode="ram")
    p = subprocess.run([sys.executable, "-m", "burn_plugin.cli", "info", str(hr.folder)],
                       capture_output=True, text=True, timeout=120)
    assert_one_error_line(p.returncode, p.stderr, "--trust-record")


def test_info_on_a_good_record(capsys, hand_record):
    rc, out, err = run(capsys, "info", hand_record.folder)
    assert rc == 0 and err == ""
    assert "mnist" in out and "smallresnet" in out
    assert "no defense:   ACC 0.9100  ASR 0.9700  RA 0.0200" in out
    assert f"bd_test:      {N_TEST - (hand_record.yte == 0).sum()} samples" in out


def test_defend_help_explains_every_burn_setting(capsys):
    import pytest

    from burn_plugin.core.config import BurnConfig

    assert set(BurnConfig._HELP) == set(BurnConfig.keys())   # a new key needs its line of help
    with pytest.raises(SystemExit) as exc:
        main(["defend", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())   # argparse wraps lines
    assert "--boundary_method {deepfool,superdeepfool}" in text
    for key in ("rounds", "candidate_mode", "distance_model"):
        assert " ".join(BurnConfig._HELP[key].replace("%%", "%").split()) in text
