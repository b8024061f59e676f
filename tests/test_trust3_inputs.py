"""Inputs that used to end in a traceback or a hang: each is now one ``error: ...`` line, exit 2 (bad
input) or 1 (a machine/peer failure), with nothing written, and huge values refused up front.

1. a decompression-bomb PNG (a poisoned image of a record; ``burn attack --trigger_image``);
2. an ``.npz`` (or a pickle) where a pattern ``.npy`` is expected (LF, SSBA);
3. ``burn attack --pratio nan`` (inf, negative, > 1);
4. integer settings such as ``rounds: 1.0e+23`` (BURN, ULRL, FT, ``burn attack``);
5. torchrun's environment: a missing ``RANK``, a bad ``MASTER_PORT``, ``WORLD_SIZE``/``RANK`` left in a
   shell (not torchrun: one process, errors shown), and peers that never join (a bounded rendezvous).
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import N_TEST, N_TRAIN
from synthetic import make_mnist_layout
from test_cli_errors import assert_one_error_line, run

TORCHRUN_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "BURN_RENDEZVOUS_TIMEOUT")




def header_only_png(path: Path, width: int, height: int) -> Path:
    """A small file whose PNG header declares ``width`` x ``height`` 8-bit grey pixels (a few rows of
    data follow): what a decompression bomb looks like before its pixels are decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def mnist_data(tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return tmp_path / "data"


@pytest.fixture
def clean_env(monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def no_result_files(folder: Path) -> bool:
    return not any((folder / f).exists() for f in ("defense_result.pt", "run.json", "scores.npz"))


# 1 ------------------------------------------------------------------------------------------------
def test_decompression_bomb_png_in_a_record_and_as_trigger_image(capsys, hand_record, mnist_data, tmp_path):
    # (a) a poisoned PNG of the record declares 100000 x 100000 pixels (PIL's DecompressionBombError)
    victim = hand_record.folder / "bd_test_dataset"
    png = sorted(victim.rglob("*.png"))[0]
    header_only_png(png, 100_000, 100_000)
    out = tmp_path / "out_ft"
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--method", "ft", "--epochs", 1,
                     "--output_dir", out)
    assert_one_error_line(rc, err, png.name, "decompression bomb")
    assert no_result_files(out)
    # a header far larger than any dataset's images, below PIL's own bound, is refused from the header too
    header_only_png(png, 5000, 5000)
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--method", "ft", "--epochs", 1,
                     "--output_dir", out)
    assert_one_error_line(rc, err, png.name, "5000x5000")
    assert no_result_files(out)

    # (b) burn attack --trigger_image: refused up front, naming the file; no record folder appears
    bomb = header_only_png(tmp_path / "bomb.png", 100_000, 100_000)
    rec = tmp_path / "record" / "blended"
    rc, _, err = run(capsys, "attack", "--attack", "blended", "--trigger_image", bomb, "--dataset", "mnist",
                     "--dataset_path", mnist_data, "--epochs", 1, "--out", rec)
    assert_one_error_line(rc, err, str(bomb), "4096x4096")
    big = header_only_png(tmp_path / "big.png", 5000, 5000)
    rc, _, err = run(capsys, "attack", "--attack", "badnet", "--trigger_image", big, "--dataset", "mnist",
                     "--dataset_path", mnist_data, "--epochs", 1, "--out", rec)
    assert_one_error_line(rc, err, str(big), "5000x5000")
    assert not rec.exists()


# 2 ------------------------------------------------------------------------------------------------
def test_npz_or_pickle_where_a_pattern_npy_is_expected(capsys, mnist_data, tmp_path):
    npz = tmp_path / "pattern.npz"
    np.savez(npz, pattern=np.zeros((28, 28, 3), np.uint8))
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rec = tmp_path / "record" / "x"
    common = ("--dataset", "mnist", "--dataset_path", mnist_data, "--epochs", 1, "--out", rec)
    rc, _, err = run(capsys, "attack", "--attack", "lf", "--lowFrequencyPatternPath", npz, *common)
    assert_one_error_line(rc, err, str(npz), ".npz", "numpy.save")
    rc, _, err = run(capsys, "attack", "--attack", "lf", "--lowFrequencyPatternPath", pickled, *common)
    assert_one_error_line(rc, err, str(pickled), "uint8")
    rc, _, err = run(capsys, "attack", "--attack", "ssba", "--attack_train_replace_imgs_path", npz,
                     "--attack_test_replace_imgs_path", npz, *common)
    assert_one_error_line(rc, err, "attack_train_replace_imgs_path", str(npz), ".npz")
    # a .npy whose header declares another shape is refused from the header
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5, 5), np.uint8))
    rc, _, err = run(capsys, "attack", "--attack", "lf", "--lowFrequencyPatternPath", wrong, *common)
    assert_one_error_line(rc, err, str(wrong), "(3, 5, 5)")
    assert not rec.exists()


# 3 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pratio", ["nan", "inf", "-0.1", "1.5"])
def test_pratio_outside_zero_one_is_refused_up_front(capsys, tmp_path, pratio):
    rec = tmp_path / "record" / "x"
    # the data path does not exist: the pratio must be judged before anything is read
    rc, _, err = run(capsys, "attack", "--pratio", pratio, "--dataset", "mnist", "--dataset_path",
                     tmp_path / "no_data", "--epochs", 1, "--out", rec)
    assert_one_error_line(rc, err, "--pratio", "(0, 1]")
    assert not rec.exists()


# 4 ------------------------------------------------------------------------------------------------
def test_huge_integer_settings_are_refused_and_integral_floats_converted(capsys, hand_record, tmp_path):
    from burn_plugin.core.config import BurnConfig, ConfigError
    from burn_plugin.core.ulrl import ULRLConfig
    from burn_plugin.defenses.ft import FTConfig

    # 1e3 (a string to YAML 1.1) and 1.0e+3 (a float) are 1000, exactly
    assert BurnConfig.from_mapping({"rounds": "1e3", "max_iter": 1.0e3}).rounds == 1000
    assert ULRLConfig.from_mapping({"unlearning_epochs": "2e1"}).unlearning_epochs == 20
    for cls, key in ((BurnConfig, "rounds"), (BurnConfig, "max_iter"), (BurnConfig, "boundary_batch_size"),
                     (ULRLConfig, "unlearning_epochs"), (ULRLConfig, "max_neurons"), (FTConfig, "epochs")):
        with pytest.raises(ConfigError, match=f"{key} in y.yaml must be at most"):
            cls.from_mapping({key: 1.0e23}, source="y.yaml")
        with pytest.raises(ConfigError, match="at most"):
            cls(**{key: 10 ** 23})
    with pytest.raises(ConfigError, match="whole number"):
        BurnConfig.from_mapping({"rounds": 2.5})

    # the command line: a YAML with rounds 1.0e+23 ends in one line at once (it used to spin forever in
    # the schedule; the percentages keep every round's selection non-empty on the 40-image record)
    y = tmp_path / "huge.yaml"
    for text in ("rounds: 1.0e+23\n", "rounds: 1e23\n"):
        y.write_text(text + "k_p0: 5\nk_pT: 5\nk_c0: 5\nk_cT: 5\n")
        try:
            p = subprocess.run([sys.executable, "-m", "burn_plugin", "defend", "--attack_folder", str(hand_record.folder),
                                "--yaml_path", str(y), "-q", "--output_dir", str(tmp_path / "o")],
                               capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
        except subprocess.TimeoutExpired:
            pytest.fail(f"burn defend with {text.strip()!r} did not end")
        assert_one_error_line(p.returncode, p.stderr, "rounds", "at most 10,000")
        assert no_result_files(tmp_path / "o")

    # burn attack's own integers (and an attack's PARAMS), before any data is read
    rec = tmp_path / "record" / "x"
    rc, _, err = run(capsys, "attack", "--epochs", 10 ** 23, "--dataset", "mnist", "--dataset_path",
                     tmp_path / "no_data", "--out", rec)
    assert_one_error_line(rc, err, "--epochs", "at most")
    rc, _, err = run(capsys, "attack", "--attack", "ssba", "--encoder_steps", 10 ** 23, "--dataset", "mnist",
                     "--dataset_path", tmp_path / "no_data", "--out", rec)
    assert_one_error_line(rc, err, "--encoder_steps", "at most")
    assert not rec.exists()


# 5 ------------------------------------------------------------------------------------------------
def test_torchrun_variables_missing_or_malformed_are_one_line(capsys, clean_env, hand_record, tmp_path):
    out = tmp_path / "o"
    args = ("defend", "--attack_folder", hand_record.folder, "--output_dir", out)
    clean_env.setenv("TORCHELASTIC_RUN_ID", "test")
    clean_env.setenv("WORLD_SIZE", "2")                   # torchrun's mark, but no RANK
    rc, _, err = run(capsys, *args)
    assert_one_error_line(rc, err, "RANK is not set")
    clean_env.setenv("RANK", "0")
    clean_env.setenv("LOCAL_RANK", "0")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    for port in ("99999", "abc"):
        clean_env.setenv("MASTER_PORT", port)
        rc, _, err = run(capsys, *args)
        assert_one_error_line(rc, err, "MASTER_PORT", port)
    assert no_result_files(out)
    from burn_plugin.errors import ConfigError, rendezvous_timeout

    clean_env.setenv("BURN_RENDEZVOUS_TIMEOUT", "nan")
    with pytest.raises(ConfigError, match="BURN_RENDEZVOUS_TIMEOUT"):
        rendezvous_timeout()
    clean_env.delenv("BURN_RENDEZVOUS_TIMEOUT")
    assert rendezvous_timeout() == 60


def test_world_size_and_rank_left_in_a_shell_do_not_silence_errors(capsys, clean_env, hand_record, tmp_path):
    clean_env.setenv("WORLD_SIZE", "2")   # exported by hand; torchrun did not start this process
    clean_env.setenv("RANK", "1")
    rc, _, err = run(capsys, "info", tmp_path / "nope")
    assert_one_error_line(rc, err, "nope")
    out = tmp_path / "ft"
    rc, stdout, err = run(capsys, "defend", "--attack_folder", hand_record.folder, "--method", "ft", "--epochs", 1,
                          "--output_dir", out)
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "torchrun" in lines[0], err
    assert (out / "defense_result.pt").is_file() and "ft on" in stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rank", [0, 1])
def test_missing_peers_end_in_one_line_naming_the_timeout(clean_env, hand_record, tmp_path, rank):
    """Rank 0 waits for a peer that never starts; rank 1 finds no rank 0: both give up after the
    rendezvous timeout (2 s here) with one line, not the backend's half hour."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(TORCHELASTIC_RUN_ID="test", TORCHELASTIC_RESTART_COUNT="0", WORLD_SIZE="2", RANK=str(rank),
               LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               BURN_RENDEZVOUS_TIMEOUT="2", OMP_NUM_THREADS="1")
    out = tmp_path / "o"
    try:
        p = subprocess.run([sys.executable, "-m", "burn_plugin", "defend", "--attack_folder", str(hand_record.folder),
                            "-q", "--output_dir", str(out)], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("a rank whose peers never joined did not give up")
    assert_one_error_line(p.returncode, p.stderr, f"rank {rank} of 2", "within 2 s", "BURN_RENDEZVOUS_TIMEOUT",
                          "torchrun", code=1)
    assert no_result_files(out)
