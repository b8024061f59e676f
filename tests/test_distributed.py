"""BURN split over torch.distributed ranks: the chunking, and a real two-process ``gloo`` run started by
torchrun against the one-process run on the same record (equal scores.npz and final weights)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from burn_plugin.fileio import boundary_cache_dir
from burn_plugin.core.distributed import CHUNKS, MIN_CHUNK_BATCHES, Group, chunk_size


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), chunk=st.integers(1, 700), world=st.integers(1, 9))
def test_the_ranks_take_every_chunk_once_in_order_and_balanced(n, chunk, world):
    parts = [Group(rank=r, world=world).chunk_ranges(n, chunk) for r in range(world)]
    flat = [c for p in parts for c in p]
    assert flat == [(a, min(a + chunk, n)) for a in range(0, n, chunk)]  # the one-process chunks, in order
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_rows_are_the_chunks_rows_in_order():
    calls = []

    def fn(s):
        calls.append((s.start, s.stop))
        return {"i": torch.arange(s.start, s.stop), "b": torch.arange(s.start, s.stop) % 2 == 0}

    rows = Group().map_rows(fn, 10, 4)
    assert calls == [(0, 4), (4, 8), (8, 10)]
    assert torch.equal(rows["i"], torch.arange(10)) and rows["b"].dtype == torch.bool


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 200_000), batch=st.integers(1, 1024))
def test_chunks_are_whole_batches_about_a_sixteenth_of_the_set(n, batch):
    c = chunk_size(batch, n)
    assert c % batch == 0 and c >= MIN_CHUNK_BATCHES * batch
    n_chunks = -(-n // c)
    assert n_chunks <= CHUNKS  # never more than CHUNKS chunks ...
    if c > MIN_CHUNK_BATCHES * batch:  # ... and, unless the minimum decides, one batch less per chunk would need more
        assert -(-n // (c - batch)) > CHUNKS


ARGS = ["--method", "burn", "--rounds", "2", "--epochs", "1", "--candidates", "3", "-q",
        # 4 x 8 = 32 images per chunk: the 200-image record is 7 chunks, 4 on rank 0 and 3 on rank 1
        "--boundary_batch_size", "8"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _torchrun(n: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           "-m", "burn_plugin", *args], capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture
def record_copy(trained_record, tmp_path):
    """A private copy of the 200-image record (no boundary cache shared with other runs)."""
    folder = tmp_path / "record" / "small"
    shutil.copytree(trained_record, folder, ignore=shutil.ignore_patterns("defense"))
    return folder, str(trained_record.parent.parent / "data")


# (processes, boundary batch): 7 chunks over 2 ranks; one 256-image chunk over 3 ranks (two get none)
@pytest.mark.parametrize("nproc, batch", [(2, "8"), (3, "64")])
def test_gloo_processes_give_the_one_process_result(record_copy, tmp_path, nproc, batch):
    folder, data = record_copy
    args = ARGS[:-1] + [batch]
    one = subprocess.run([sys.executable, "-m", "burn_plugin", "defend", "--attack_folder", str(folder), *args,
                          "--dataset_path", data, "--output_dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert one.returncode == 0, one.stderr
    shutil.rmtree(boundary_cache_dir())  # the two-process run must analyse, not read the user's cache
    two = _torchrun(nproc, "defend", "--attack_folder", str(folder), *args, "--dataset_path", data,
                    "--output_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("burn on ") == 1  # rank 0 alone prints the summary
    a, b = np.load(tmp_path / "one" / "scores.npz"), np.load(tmp_path / "two" / "scores.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k
    wa = torch.load(tmp_path / "one" / "defense_result.pt")["model"]
    wb = torch.load(tmp_path / "two" / "defense_result.pt")["model"]
    w0 = torch.load(folder / "attack_result.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa if wa[k].is_floating_point())  # fine-tuning did move them
    assert len(list((tmp_path / "two" / "log").iterdir())) == 1  # rank 0's log only
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == nproc


def test_a_defense_that_cannot_split_stops_every_rank_with_one_error_line(record_copy, tmp_path):
    folder, data = record_copy
    res = _torchrun(2, "defend", "--attack_folder", str(folder), "--method", "ft", "--dataset_path", data, "-q",
                    "--output_dir", str(tmp_path / "ft"))
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert ours == ["error: --method ft runs in one process; start it with `burn defend`, not torchrun "
                    "(only BURN splits its work over processes)"]
    assert not (tmp_path / "ft" / "defense_result.pt").exists()
