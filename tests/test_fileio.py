"""Safe loading (no pickle code runs without --trust-record) and atomic writing (issue 7)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import stat

import numpy as np
import pandas as pd
import pytest
import torch

from burn_plugin.bench.records import load_record
from burn_plugin.errors import (BadInputError, CorruptFileError, OutputNotWritableError,
                                RecordNotFoundError, UntrustedFileError)
from burn_plugin.fileio import (atomic_path, atomic_write, load_settings_file, save_csv, save_json, save_npz,
                                save_text, save_torch, torch_load)
from conftest import rewrite_pickle_in_pt


class Planted:
    """Unpickling this runs ``os.system`` and creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class PlantedEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


# ------------------------------------------------------------------------------------------------
# safe loading

@pytest.mark.parametrize("planted", [Planted, PlantedEval])
def test_planted_pickle_is_refused_and_not_run(tmp_path, planted):
    marker = tmp_path / "PWNED"
    f = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": planted(marker)}, f)
    with pytest.raises(UntrustedFileError) as ei:
        torch_load(f)
    assert not marker.exists()
    msg = str(ei.value)
    assert "--trust-record" in msg and str(f) in msg
    assert ("system" in msg) or ("eval" in msg)  # names what it refused
    # the marker mechanism is real: the full unpickler does run it
    torch_load(f, trusted=True)
    assert marker.exists()


def test_planted_pickle_in_a_record(hand_record, tmp_path):
    marker = tmp_path / "PWNED"
    obj = hand_record.obj
    obj["bd_train"]["bd_data_container"]["data_dict"][np.int64(0)]["other_info"] = [Planted(marker), 3]
    torch.save(obj, hand_record.pt)
    with pytest.raises(UntrustedFileError, match="--trust-record"):
        load_record(hand_record.folder)
    assert not marker.exists()


def test_planted_pickle_in_info_pickle(hand_record, tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"attack": "badnet", "evil": Planted(marker)}, hand_record.folder / "info.pickle")
    with pytest.raises(UntrustedFileError):
        load_record(hand_record.folder)
    assert not marker.exists()
    # an old-style plain pickle with a planted object is not run either
    with open(hand_record.folder / "info.pickle", "wb") as fh:
        pickle.dump({"attack": "badnet", "evil": Planted(marker)}, fh)
    with pytest.raises(UntrustedFileError, match="--trust-record"):
        load_settings_file(hand_record.folder / "info.pickle")
    with pytest.raises(UntrustedFileError):   # refused by the record loader too, not dropped silently
        load_record(hand_record.folder)
    assert not marker.exists()


def test_numpy_allow_list_both_module_names(tmp_path):
    obj = {"i64": np.arange(4, dtype=np.int64), "f64": np.linspace(0, 1, 3), "f32": np.ones(2, np.float32),
           "u8": np.zeros((2, 2), np.uint8), "b": np.array([True, False]), "s": np.int64(7), "f": np.float64(0.5),
           "k": {np.int64(3): [np.int64(1), 2]}, "t": torch.ones(2), "tup": (32, 32, 3)}
    f = tmp_path / "np.pt"
    torch.save(obj, f)
    for _ in range(2):  # numpy-2 names, then numpy-1 names
        got = torch_load(f)
        assert set(got) == set(obj)
        for k in ("i64", "f64", "f32", "u8", "b"):
            assert got[k].dtype == obj[k].dtype
            np.testing.assert_array_equal(got[k], obj[k])
        assert got["s"] == 7 and type(got["s"]) is np.int64 and got["f"] == 0.5
        assert got["k"] == {3: [1, 2]} and type(next(iter(got["k"]))) is np.int64
        assert torch.equal(got["t"], torch.ones(2)) and got["tup"] == (32, 32, 3)
        assert rewrite_pickle_in_pt(f, b"numpy._core", b"numpy.core") >= 0


def test_pil_image_needs_trust(tmp_path):
    from PIL import Image

    f = tmp_path / "pil.pt"
    torch.save({"img": Image.new("L", (3, 3))}, f)
    with pytest.raises(UntrustedFileError, match="PIL"):
        torch_load(f)
    assert torch_load(f, trusted=True)["img"].size == (3, 3)


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"not a torch file at all", b"PK\x03\x04garbage"])
def test_corrupt_files(tmp_path, content):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    for trusted in (False, True):
        with pytest.raises(CorruptFileError, match="corrupt or truncated"):
            torch_load(f, trusted=trusted)


def test_truncated_file(tmp_path):
    f = tmp_path / "x.pt"
    torch.save({"a": np.arange(1000)}, f)
    data = f.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        f.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError):
            torch_load(f)


def test_missing_file(tmp_path):
    with pytest.raises(RecordNotFoundError, match="not found"):
        torch_load(tmp_path / "nope.pt")
    with pytest.raises(RecordNotFoundError):
        torch_load(tmp_path)  # a folder
    assert issubclass(UntrustedFileError, BadInputError) and UntrustedFileError.exit_code == 2


def test_load_settings_file(tmp_path):
    f = tmp_path / "info.pickle"
    torch.save({"attack": "badnet", "pratio": 0.1, "img_size": [32, 32, 3], "none": None}, f)
    assert load_settings_file(f) == {"attack": "badnet", "pratio": 0.1, "img_size": [32, 32, 3], "none": None}
    with open(f, "wb") as fh:  # an old plain pickle
        pickle.dump({"attack": "blended", "arr": np.arange(3)}, fh)
    got = load_settings_file(f)
    assert got["attack"] == "blended" and got["arr"].tolist() == [0, 1, 2]
    torch.save([1, 2], f)
    with pytest.raises(CorruptFileError, match="expected a dict"):
        load_settings_file(f)
    f.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptFileError):
        load_settings_file(f)


# ------------------------------------------------------------------------------------------------
# atomic writing

def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_failed_writer_keeps_previous_file(tmp_path, exc):
    target = tmp_path / "result.csv"
    target.write_text("old content\n")

    def writer(p):
        p.write_text("half of the new")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, writer)
    assert target.read_text() == "old content\n"
    assert _leftovers(tmp_path) == []


def test_disk_full_is_a_clear_error(tmp_path):
    target = tmp_path / "x.pt"
    target.write_bytes(b"old")

    def writer(p):
        p.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputNotWritableError, match="disk full"):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_successful_writes(tmp_path):
    save_torch({"a": torch.ones(2)}, tmp_path / "sub" / "a.pt")
    assert torch.equal(torch_load(tmp_path / "sub" / "a.pt")["a"], torch.ones(2))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "a.pt").st_mode) == 0o666 & ~mask
    save_json({"n": np.int64(3), "f": np.float32(0.5), "a": np.arange(2), "t": (1, 2)}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"n": 3, "f": 0.5, "a": [0, 1], "t": [1, 2]}
    save_csv(pd.DataFrame({"x": [1, 2]}), tmp_path / "d.csv", index=False)
    assert (tmp_path / "d.csv").read_text().splitlines() == ["x", "1", "2"]
    save_npz(tmp_path / "s.npz", a=np.arange(3))
    assert np.load(tmp_path / "s.npz")["a"].tolist() == [0, 1, 2]
    save_text("one", tmp_path / "t.txt")
    save_text("two", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_text() == "two"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_output_parent_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputNotWritableError, match="writable"):
        save_text("x", tmp_path / "afile" / "out.txt")


def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        with pytest.raises(OutputNotWritableError, match="writable"):
            save_text("x", ro / "out.txt")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_atomic_path_only_renames_on_success(tmp_path):
    target = tmp_path / "t.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert not target.exists() and tmp.parent == tmp_path
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []
