"""Attack records: hand-built BackdoorBench folders (interface.md 2.1-2.5) load into BB's 5-tuples."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from burn_plugin.bench import datasets as D
from burn_plugin.bench.records import (CONTAINER_KEYS, RECORD_KEYS, STATE_KEYS, BDDataset, PoisonContainer,
                                       bb_root_of, load_record, make_state, read_summary, resolve_data_root,
                                       save_record, write_poisoned_split)
from burn_plugin.errors import (CorruptFileError, DataNotFoundError, RecordNotFoundError, ShapeMismatchError,
                                UnknownNameError, UntrustedFileError)
from conftest import N_TEST, N_TRAIN, TARGET, build_hand_record, rewrite_pickle_in_pt, small_state_dict


def _plain(ds: BDDataset) -> BDDataset:
    """The same dataset without its transform, so items carry the PIL image."""
    out = ds.subset(np.arange(len(ds)))
    out.transform = None
    return out


def _test_pixels(spec, img: Image.Image) -> np.ndarray:
    """BackdoorBench's test transform up to (not including) Normalize, as uint8 (3, H, W)."""
    steps = D.get_transform(spec, False).transforms
    assert isinstance(steps[-1], T.Normalize)
    x = T.Compose(steps[:-1])(img)
    return (x * 255).round().to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------------
# disk mode

def test_disk_record_metadata(hand_record):
    rec = load_record(hand_record.folder)
    assert rec.model_name == "smallresnet"
    assert rec.num_classes == 10
    assert rec.dataset == "mnist"
    assert rec.img_size == (28, 28, 1)
    assert rec.data_root == (hand_record.root / "data" / "mnist").resolve()
    assert rec.name == "badnet_hand"
    assert set(rec.state_dict) == set(hand_record.obj["model"])
    assert len(rec.clean_train) == N_TRAIN and len(rec.clean_test) == N_TEST
    assert len(rec.bd_train) == N_TRAIN
    assert len(rec.bd_test) == len(hand_record.test_poison) < N_TEST
    # the poison indicator spans the full split and is the stored one (interface.md 2.5)
    ind = rec.bd_train.poison_indicator
    assert len(ind) == N_TRAIN and np.flatnonzero(ind == 1).tolist() == hand_record.train_poison
    assert len(rec.bd_test.poison_indicator) == N_TEST
    # an attack_result.pt path works as well as its folder
    assert load_record(hand_record.pt).folder == hand_record.folder


def test_disk_record_bd_train_five_tuples(hand_record):
    rec = load_record(hand_record.folder)
    ds = _plain(rec.bd_train)
    seen_poison = []
    for i in range(len(ds)):
        img, label, oi, flag, orig = ds[i]
        assert oi == i
        assert orig == hand_record.ytr[i]
        if i in hand_record.train_poison:
            seen_poison.append(i)
            assert (flag, label) == (1, TARGET)
            np.testing.assert_array_equal(np.asarray(img), hand_record.bd_train_images[i])
        else:
            assert (flag, label) == (0, hand_record.ytr[i])
            np.testing.assert_array_equal(np.asarray(img), hand_record.xtr[i])
    assert seen_poison == hand_record.train_poison
    # with its (train) transform the image is a normalised 3-channel tensor
    x, *_ = rec.bd_train[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 28, 28) and x.dtype == torch.float32
    assert x.min() < 0  # Normalize((0.5,), (0.5,)) maps black to -1


def test_disk_record_bd_test_is_non_target_subset(hand_record):
    rec = load_record(hand_record.folder)
    ds = _plain(rec.bd_test)
    items = [ds[i] for i in range(len(ds))]
    assert [it[2] for it in items] == hand_record.test_poison
    for img, label, oi, flag, orig in items:
        assert flag == 1 and label == TARGET
        assert orig == hand_record.yte[oi] != TARGET
        np.testing.assert_array_equal(np.asarray(img), hand_record.bd_test_images[oi])


def test_getitem_all_switch_swaps_labels(hand_record):
    rec = load_record(hand_record.folder)
    ds = _plain(rec.bd_train)
    i = hand_record.train_poison[1]
    normal = ds[i]
    ds.getitem_all_switch = True
    switched = ds[i]
    assert normal[1] != normal[4]  # a flipped sample, so the swap is visible
    assert (switched[1], switched[2], switched[3], switched[4]) == (normal[4], normal[2], normal[3], normal[1])


def test_label_arrays_match_iteration(hand_record):
    rec = load_record(hand_record.folder)
    for ds in (rec.bd_train, rec.bd_test, rec.clean_test, rec.bd_test.subset([3, 0, 2])):
        arrays = ds.label_arrays()
        plain = _plain(ds)
        items = [plain[i] for i in range(len(plain))]
        assert arrays["label"].tolist() == [it[1] for it in items]
        assert arrays["original_index"].tolist() == [it[2] for it in items]
        assert arrays["poison"].astype(int).tolist() == [it[3] for it in items]
        assert arrays["original_label"].tolist() == [it[4] for it in items]


def test_to_tensors_equal_pil_test_transform(hand_record):
    rec = load_record(hand_record.folder)
    for split in ("bd_train", "bd_test", "clean_test"):
        ds = getattr(rec, split)
        t = rec.tensors(split)
        assert t.x.dtype == torch.uint8 and t.x.shape == (len(ds), 3, 28, 28)
        plain = _plain(ds)
        for i in range(len(ds)):
            np.testing.assert_array_equal(t.x[i].numpy(), _test_pixels(rec.spec, plain[i][0]))
        arrays = ds.label_arrays()
        assert t.label.tolist() == arrays["label"].tolist()
        assert t.poison.tolist() == arrays["poison"].tolist()
        assert t.original_label.tolist() == arrays["original_label"].tolist()
    assert rec.tensors("bd_test") is rec.tensors("bd_test")  # cached


def test_subset_does_not_copy_or_mutate(hand_record):
    rec = load_record(hand_record.folder)
    sub = rec.bd_train.subset([5, 0])
    assert len(sub) == 2 and len(rec.bd_train) == N_TRAIN
    assert sub.label_arrays()["original_index"].tolist() == [5, 0]
    assert len(sub.poison_indicator) == N_TRAIN


def test_missing_png_is_a_clear_error(hand_record):
    i = hand_record.train_poison[0]
    os.remove(hand_record.folder / "bd_train_dataset" / str(hand_record.ytr[i]) / f"{i}.png")
    rec = load_record(hand_record.folder)
    with pytest.raises(RecordNotFoundError, match="bd_train_dataset"):
        rec.tensors("bd_train")


def test_settings_and_baseline_are_read(hand_record):
    rec = load_record(hand_record.folder)
    assert rec.settings["attack"] == "badnet"
    assert rec.settings["pratio"] == 0.15
    assert rec.attack_target() == TARGET
    assert rec.baseline == {"epoch": 0.0, "test_acc": 0.91, "test_asr": 0.97, "test_ra": 0.02}
    assert read_summary(hand_record.folder / "attack_df_summary.csv", "valid_max")["test_ra"] == 0.5
    assert read_summary(hand_record.folder / "nope.csv") is None


def test_record_without_info_or_summary(hand_record_factory):
    hr = hand_record_factory(summary=False)
    os.remove(hr.folder / "info.pickle")
    rec = load_record(hr.folder)
    assert rec.settings == {} and rec.baseline is None and rec.attack_target() is None


def test_record_without_bd_train(hand_record_factory):
    hr = hand_record_factory(with_bd_train=False)
    rec = load_record(hr.folder)
    assert rec.bd_train is None
    assert len(rec.bd_test) == len(hr.test_poison)
    with pytest.raises(CorruptFileError, match="bd_train"):
        rec.tensors("bd_train")


# ------------------------------------------------------------------------------------------------
# RAM mode

def test_ram_record_needs_trust(hand_record_factory):
    hr = hand_record_factory(mode="ram")
    with pytest.raises(UntrustedFileError, match="--trust-record"):
        load_record(hr.folder)
    rec = load_record(hr.folder, trusted=True)
    assert rec.bd_train.container.save_folder_path is None
    assert not (hr.folder / "bd_train_dataset").exists()
    ds = _plain(rec.bd_train)
    for i in range(N_TRAIN):
        img, label, oi, flag, orig = ds[i]
        assert (oi, orig) == (i, hr.ytr[i])
        if i in hr.train_poison:
            assert (flag, label) == (1, TARGET)
            np.testing.assert_array_equal(np.asarray(img), hr.bd_train_images[i])
        else:
            assert (flag, label) == (0, hr.ytr[i])
    t = rec.tensors("bd_test")
    assert t.original_index.tolist() == hr.test_poison
    assert bool(t.poison.all())
    plain = _plain(rec.bd_test)
    for j in range(len(plain)):
        np.testing.assert_array_equal(t.x[j].numpy(), _test_pixels(rec.spec, plain[j][0]))


# ------------------------------------------------------------------------------------------------
# where the data and the PNGs are found

def test_data_root_rule_with_extra_record_and_data_components(tmp_path):
    root = tmp_path / "record_stuff" / "data_x" / "record" / "data" / "BB"
    hr = build_hand_record(root)
    rec = load_record(hr.folder)
    assert rec.data_root == (root / "data" / "mnist").resolve()
    assert len(rec.tensors("bd_train")) == N_TRAIN


def test_data_path_rewritten_from_first_data_component(tmp_path):
    # an absolute data_path of another machine: only the part from the 'data' component counts, and a
    # component that merely contains 'data' ('mydata') is not it (BackdoorBench's string search breaks here)
    hr = build_hand_record(tmp_path / "BB", data_path="/home/recorder/mydata/BackdoorBench/data/mnist")
    rec = load_record(hr.folder)
    assert rec.data_root == (tmp_path / "BB" / "data" / "mnist").resolve()
    assert resolve_data_root(hr.folder, "./data/mnist", "mnist") == (tmp_path / "BB" / "data" / "mnist").resolve()
    assert resolve_data_root(hr.folder, "/x/data/y/data/mnist", "mnist") == \
        (tmp_path / "BB" / "data" / "y" / "data" / "mnist").resolve()
    assert bb_root_of(hr.folder) == (tmp_path / "BB").resolve()


def test_dataset_path_override(tmp_path):
    hr = build_hand_record(tmp_path / "BB", with_data=False)
    with pytest.raises(DataNotFoundError) as ei:
        load_record(hr.folder)
    assert str(tmp_path / "BB" / "data" / "mnist") in str(ei.value)
    from synthetic import make_mnist_layout

    make_mnist_layout(tmp_path / "elsewhere" / "mnist", n_train=N_TRAIN, n_test=N_TEST)
    rec = load_record(hr.folder, dataset_path=tmp_path / "elsewhere")
    assert rec.data_root == tmp_path / "elsewhere" / "mnist"
    assert len(rec.tensors("bd_train")) == N_TRAIN


def test_renamed_record_folder_finds_pngs(hand_record):
    new = hand_record.folder.parent / "renamed"
    hand_record.folder.rename(new)
    rec = load_record(new)
    t = rec.tensors("bd_train")
    j = hand_record.train_poison[2]
    np.testing.assert_array_equal(t.x[j, 0].numpy(), hand_record.bd_train_images[j])


def test_moved_record_and_data_to_another_root(hand_record, tmp_path):
    other = tmp_path / "other" / "place"
    (other / "record").mkdir(parents=True)
    shutil.move(str(hand_record.folder), str(other / "record" / "moved"))
    shutil.move(str(hand_record.root / "data"), str(other / "data"))
    rec = load_record(other / "record" / "moved")
    assert rec.data_root == (other / "data" / "mnist").resolve()
    t = rec.tensors("bd_test")
    j = 0
    oi = int(t.original_index[j])
    np.testing.assert_array_equal(t.x[j, 0].numpy(), hand_record.bd_test_images[oi])


def test_run_from_another_working_directory(hand_record, tmp_path, monkeypatch):
    # stored PNG paths are relative to <R>, not to the current directory
    monkeypatch.chdir(tmp_path)
    rec = load_record(os.path.relpath(hand_record.folder, tmp_path))
    assert len(rec.tensors("bd_train")) == N_TRAIN


# ------------------------------------------------------------------------------------------------
# inconsistent records

def test_num_classes_disagreeing_with_dataset(hand_record_factory):
    hr = hand_record_factory(num_classes=5)
    with pytest.raises(ShapeMismatchError, match="classes"):
        load_record(hr.folder)


def test_dataset_flag_must_agree(hand_record):
    with pytest.raises(ShapeMismatchError, match="cifar10"):
        load_record(hand_record.folder, dataset="cifar10")
    assert load_record(hand_record.folder, dataset="mnist").dataset == "mnist"


def test_unknown_dataset_in_record(hand_record):
    obj = dict(hand_record.obj, clean_data="imagenet")
    torch.save(obj, hand_record.pt)
    with pytest.raises(UnknownNameError, match="imagenet"):
        load_record(hand_record.folder)


def test_missing_record(tmp_path):
    with pytest.raises(RecordNotFoundError):
        load_record(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordNotFoundError, match="attack_result.pt"):
        load_record(tmp_path / "empty")


def test_poison_flag_without_container_entry(hand_record):
    obj = hand_record.obj
    obj["bd_train"]["poison_indicator"][1] = 1.0  # flagged but absent from data_dict
    torch.save(obj, hand_record.pt)
    with pytest.raises(CorruptFileError, match="absent"):
        load_record(hand_record.folder)


def test_poison_indicator_of_wrong_length(hand_record):
    obj = hand_record.obj
    obj["bd_test"]["poison_indicator"] = np.zeros(N_TEST + 1)
    torch.save(obj, hand_record.pt)
    with pytest.raises(CorruptFileError, match="poison_indicator"):
        load_record(hand_record.folder)


# ------------------------------------------------------------------------------------------------
# numpy-1 pickles

def test_numpy1_style_record_loads(hand_record):
    n = rewrite_pickle_in_pt(hand_record.pt, b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert n > 0
    import zipfile

    with zipfile.ZipFile(hand_record.pt) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"numpy.core.multiarray\n_reconstruct" in pkl and b"numpy._core" not in pkl
    rec = load_record(hand_record.folder)
    assert rec.bd_train.poison_indicator.dtype == np.float64
    assert np.flatnonzero(rec.bd_train.poison_indicator).tolist() == hand_record.train_poison
    assert rec.bd_test.original_index_array.tolist() == hand_record.test_poison
    assert rec.bd_test.label_arrays()["label"].tolist() == [TARGET] * len(hand_record.test_poison)


# ------------------------------------------------------------------------------------------------
# writing: our writer produces what the spec says, and it loads back identically

def test_save_record_round_trip_and_exact_format(tmp_path):
    from synthetic import make_mnist_layout

    root = tmp_path / "BB"
    make_mnist_layout(root / "data" / "mnist", n_train=N_TRAIN, n_test=N_TEST)
    folder = root / "record" / "ours"
    folder.mkdir(parents=True)
    raw_tr = D.load_raw("mnist", root / "data" / "mnist", True)
    raw_te = D.load_raw("mnist", root / "data" / "mnist", False)
    ytr, yte = np.asarray(raw_tr.targets), np.asarray(raw_te.targets)
    tr_idx = [2, 9, 30]
    te_idx = [int(i) for i in np.flatnonzero(yte != 4)]
    rng = np.random.RandomState(1)
    tr_imgs = {i: rng.randint(0, 256, (28, 28)).astype(np.uint8) for i in tr_idx}
    te_imgs = {i: rng.randint(0, 256, (28, 28)).astype(np.uint8) for i in te_idx}
    tr_dd = write_poisoned_split(folder, "bd_train_dataset", tr_imgs, {i: 4 for i in tr_idx},
                                 {i: int(ytr[i]) for i in tr_idx})
    te_dd = write_poisoned_split(folder, "bd_test_dataset", te_imgs, {i: 4 for i in te_idx},
                                 {i: int(yte[i]) for i in te_idx})
    ind_tr = np.zeros(N_TRAIN)
    ind_tr[tr_idx] = 1
    ind_te = np.zeros(N_TEST)
    ind_te[te_idx] = 1
    sd = small_state_dict()
    save_record(folder, model_name="smallresnet", num_classes=10, state_dict=sd, dataset="mnist",
                bd_train=make_state(tr_dd, ind_tr, np.arange(N_TRAIN), "./record/ours/bd_train_dataset"),
                bd_test=make_state(te_dd, ind_te, te_idx, "./record/ours/bd_test_dataset"))

    obj = torch.load(folder / "attack_result.pt", weights_only=False)
    check_record_format(obj, "./record/ours", "mnist")
    assert obj["bd_train"]["bd_data_container"]["data_dict"][np.int64(9)] == \
        {"path": f"./record/ours/bd_train_dataset/{ytr[9]}/9.png", "other_info": [4, int(ytr[9])]}
    assert (folder / "bd_train_dataset" / str(ytr[9]) / "9.png").is_file()

    rec = load_record(folder)
    t = rec.tensors("bd_train")
    for i in range(N_TRAIN):
        if i in tr_idx:
            np.testing.assert_array_equal(t.x[i, 0].numpy(), tr_imgs[i])
            assert (int(t.label[i]), bool(t.poison[i])) == (4, True)
        else:
            np.testing.assert_array_equal(t.x[i, 0].numpy(), raw_tr.data[i])
            assert (int(t.label[i]), bool(t.poison[i])) == (ytr[i], False)
    assert t.original_label.tolist() == ytr.tolist()
    te = rec.tensors("bd_test")
    assert te.original_index.tolist() == te_idx
    for j, i in enumerate(te_idx):
        np.testing.assert_array_equal(te.x[j, 0].numpy(), te_imgs[i])
    for k, v in sd.items():
        assert torch.equal(rec.state_dict[k], v)
    # the retrieved state equals what was written
    state = rec.bd_test.retrieve_state(obj["bd_test"]["bd_data_container"]["data_dict"])
    assert list(state) == list(STATE_KEYS)
    np.testing.assert_array_equal(state["poison_indicator"], ind_te)
    np.testing.assert_array_equal(state["original_index_array"], te_idx)


def test_write_poisoned_split_ram_mode(tmp_path):
    imgs = {5: np.full((4, 4, 3), 9, np.uint8)}
    dd = write_poisoned_split(tmp_path, "bd_train_dataset", imgs, {5: 1}, {5: 3}, ram=True)
    (k, v), = dd.items()
    assert type(k) is np.int64 and k == 5
    assert isinstance(v[0], Image.Image) and v[1:] == (1, 3)
    assert not (tmp_path / "bd_train_dataset").exists()
    c = PoisonContainer(dd, None)
    assert c.labels(5) == (1, 3) and np.asarray(c.image(5)).tolist() == imgs[5].tolist()


def check_record_format(obj: dict, save_path: str, dataset: str) -> None:
    """attack_result.pt exactly as interface.md 2.1 describes it (keys, order, types)."""
    assert list(obj) == list(RECORD_KEYS) == ["model_name", "num_classes", "model", "data_path", "img_size",
                                              "clean_data", "bd_train", "bd_test"]
    types = [str, int, dict, str, tuple, str, dict, dict]
    for (k, v), t in zip(obj.items(), types):
        assert type(v) is t, (k, type(v))
    assert obj["data_path"] == f"./data/{dataset}" and obj["clean_data"] == dataset
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in obj["model"].values())
    for split in ("bd_train", "bd_test"):
        st = obj[split]
        assert list(st) == list(STATE_KEYS) == ["bd_data_container", "getitem_all", "getitem_all_switch",
                                                "original_index_array", "poison_indicator", "save_folder_path"]
        assert st["getitem_all"] is True and st["getitem_all_switch"] is False
        assert st["save_folder_path"] == f"{save_path}/{split}_dataset"
        c = st["bd_data_container"]
        assert list(c) == list(CONTAINER_KEYS) == ["save_folder_path", "data_dict", "save_file_format"]
        assert c["save_folder_path"] == st["save_folder_path"] and c["save_file_format"] == ".png"
        assert isinstance(st["original_index_array"], np.ndarray) and st["original_index_array"].dtype == np.int64
        assert isinstance(st["poison_indicator"], np.ndarray) and st["poison_indicator"].dtype == np.float64
        assert set(np.unique(st["poison_indicator"])) <= {0.0, 1.0}
        for k, v in c["data_dict"].items():
            assert type(k) is np.int64
            assert set(v) == {"path", "other_info"}
            bd, orig = v["other_info"]
            assert v["path"] == f"{save_path}/{split}_dataset/{orig}/{int(k)}.png"
            assert st["poison_indicator"][int(k)] == 1
