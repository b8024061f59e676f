"""Fuzzing: malformed records and settings must end in a BurnError (one-line CLI message), nothing else."""
from __future__ import annotations

import copy
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from burn_plugin.bench.records import CONTAINER_KEYS, RECORD_KEYS, STATE_KEYS, load_record
from burn_plugin.core.config import BurnConfig
from burn_plugin.errors import BurnError, ConfigError
from burn_plugin.settings import IGNORED_BB_KEYS, RUN_KEYS, load_yaml, split_settings
from conftest import N_TEST, N_TRAIN, build_hand_record

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base_record(tmp_path_factory):
    hr = build_hand_record(tmp_path_factory.mktemp("fuzz") / "BB")
    return hr


# ------------------------------------------------------------------------------------------------
# values

def _array(draw_kind, n):
    kinds = {
        "zeros": lambda: np.zeros(n),
        "ones": lambda: np.ones(n),
        "ints": lambda: np.arange(n, dtype=np.int64),
        "neg": lambda: -np.ones(n, dtype=np.int64),
        "big": lambda: np.full(n, 10 ** 6, dtype=np.int64),
        "half": lambda: np.full(n, 0.5),
        "nan": lambda: np.full(n, np.nan),
        "2d": lambda: np.zeros((n, 2)),
        "bool": lambda: np.ones(n, dtype=bool),
        "u8": lambda: np.ones(n, dtype=np.uint8),
        "scalar": lambda: np.array(3.0),
    }
    return kinds[draw_kind]()


arrays = st.builds(_array, st.sampled_from(["zeros", "ones", "ints", "neg", "big", "half", "nan", "2d", "bool",
                                            "u8", "scalar"]),
                   st.sampled_from([0, 1, N_TEST - 1, N_TEST, N_TEST + 1, N_TRAIN, N_TRAIN + 1]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.binary(max_size=8),
                    st.sampled_from(["./record/x/bd_train_dataset/0/0.png", "/", ".", "../../etc/passwd",
                                     "info.pickle", "./record/badnet_hand/info.pickle", "mnist", "cifar10",
                                     "./data/mnist", "data", "\x00"]),
                    st.sampled_from([np.int64(3), np.float64(-1.5), np.int64(-1), np.int64(10 ** 6)]))
junk = st.recursive(st.one_of(scalars, arrays),
                    lambda c: st.one_of(st.lists(c, max_size=4), st.tuples(c, c), st.tuples(c, c, c),
                                        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-3, 50)), c,
                                                        max_size=4)),
                    max_leaves=6)
DELETE = object()


def _exercise(folder):
    """What `burn info` and `burn defend` do with a loaded record."""
    rec = load_record(folder)
    for split in ("bd_train", "bd_test", "clean_test"):
        ds = getattr(rec, split)
        if ds is not None:
            ds.label_arrays()
            rec.tensors(split)
            if len(ds):
                ds[0]
    rec.build_model()
    rec.attack_target()


def _check(folder):
    try:
        _exercise(folder)
    except BurnError:
        pass  # the CLI prints it as one line


@FUZZ
@given(data=st.data())
def test_fuzz_attack_result_contents(base_record, data):
    obj = copy.deepcopy(base_record.obj)
    for _ in range(data.draw(st.integers(1, 3), label="n_mutations")):
        where = data.draw(st.sampled_from(["top", "state", "container", "entry_value", "entry_key", "other_info",
                                           "path", "model"]), label="where")
        value = data.draw(st.one_of(st.just(DELETE), junk), label="value")
        split = data.draw(st.sampled_from(["bd_train", "bd_test"]), label="split")
        st_obj = obj.get(split) if isinstance(obj.get(split), dict) else None
        cont = st_obj.get("bd_data_container") if st_obj is not None else None
        dd = cont.get("data_dict") if isinstance(cont, dict) else None
        if where == "top":
            target, key = obj, data.draw(st.sampled_from(RECORD_KEYS), label="key")
        elif where == "state" and st_obj is not None:
            target, key = st_obj, data.draw(st.sampled_from(STATE_KEYS), label="key")
        elif where == "container" and isinstance(cont, dict):
            target, key = cont, data.draw(st.sampled_from(CONTAINER_KEYS), label="key")
        elif where in ("entry_value", "entry_key", "other_info", "path") and isinstance(dd, dict) and dd:
            k = data.draw(st.sampled_from(sorted(dd, key=str)), label="entry")
            if where == "entry_value":
                target, key = dd, k
            elif where == "entry_key":
                v = dd.pop(k)
                new_key = data.draw(st.one_of(scalars.filter(lambda x: _hashable(x)), st.integers(-5, 100)),
                                    label="new_key")
                dd[new_key] = v
                continue
            elif isinstance(dd[k], dict):
                target, key = dd[k], ("other_info" if where == "other_info" else "path")
            else:
                continue
        elif where == "model" and isinstance(obj.get("model"), dict) and obj["model"]:
            target = obj["model"]
            key = data.draw(st.sampled_from(sorted(target)), label="param")
            value = data.draw(st.one_of(st.just(DELETE), junk, st.sampled_from([torch.zeros(3), torch.zeros(0),
                                                                             torch.zeros(10, 64, dtype=torch.int64)])),
                              label="param_value")
        else:
            continue
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    try:
        torch.save(obj, base_record.pt)
    except Exception:  # noqa: BLE001 - an object torch cannot save is no test case
        assume(False)
    try:
        _check(base_record.folder)
    finally:
        torch.save(base_record.obj, base_record.pt)


def _hashable(x):
    try:
        hash(x)
    except TypeError:
        return False
    return not (isinstance(x, float) and math.isnan(x))


@FUZZ
@given(obj=junk)
def test_fuzz_non_record_objects(base_record, obj):
    try:
        torch.save(obj, base_record.pt)
    except Exception:  # noqa: BLE001
        assume(False)
    try:
        _check(base_record.folder)
    finally:
        torch.save(base_record.obj, base_record.pt)


@FUZZ
@given(blob=st.binary(max_size=600), keep=st.integers(0, 4000), flip=st.integers(0, 10 ** 6))
def test_fuzz_bytes_files(base_record, blob, keep, flip):
    good = base_record.pt.read_bytes()
    candidates = [blob, good[:keep], blob + good[keep:]]
    damaged = bytearray(good)
    damaged[flip % len(damaged)] ^= 0xFF
    candidates.append(bytes(damaged))
    try:
        for content in candidates:
            base_record.pt.write_bytes(content)
            _check(base_record.folder)
    finally:
        base_record.pt.write_bytes(good)


@FUZZ
@given(blob=st.binary(max_size=300), which=st.sampled_from(["info.pickle", "attack_df_summary.csv", "png"]))
def test_fuzz_side_files(base_record, blob, which):
    if which == "png":
        i = base_record.train_poison[0]
        f = base_record.folder / "bd_train_dataset" / str(base_record.ytr[i]) / f"{i}.png"
    else:
        f = base_record.folder / which
    good = f.read_bytes()
    try:
        f.write_bytes(blob)
        _check(base_record.folder)
    finally:
        f.write_bytes(good)


def test_png_path_is_a_folder(base_record):
    i = base_record.train_poison[0]
    obj = copy.deepcopy(base_record.obj)
    obj["bd_train"]["bd_data_container"]["data_dict"][np.int64(i)]["path"] = "./record"
    torch.save(obj, base_record.pt)
    try:
        with pytest.raises(BurnError):
            _exercise(base_record.folder)
    finally:
        torch.save(base_record.obj, base_record.pt)


# ------------------------------------------------------------------------------------------------
# settings

# integers beyond float range are left out here: see test_huge_integer_for_a_float_setting
finite_ints = st.integers(-(10 ** 20), 10 ** 20)
setting_values = st.recursive(
    st.one_of(st.none(), st.booleans(), finite_ints, st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=10), st.sampled_from(["true", "no", "1e5", "[0.9, 0.999]", "(0.5,0.5)", "cpu", "nan"])),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=3)),
    max_leaves=4)
setting_keys = st.one_of(st.sampled_from(BurnConfig.keys() + list(RUN_KEYS) + list(IGNORED_BB_KEYS)),
                         st.text(max_size=8))


@FUZZ
@given(merged=st.dictionaries(setting_keys, setting_values, max_size=6))
def test_fuzz_split_settings(merged):
    try:
        cfg, run, ignored = split_settings(merged, source="fuzz")
    except ConfigError:
        return
    assert isinstance(cfg, BurnConfig)
    assert set(run) <= set(RUN_KEYS) and set(ignored) <= set(IGNORED_BB_KEYS)
    cfg.validate()


@FUZZ
@given(values=st.one_of(st.dictionaries(st.sampled_from(BurnConfig.keys()), setting_values, max_size=5),
                        setting_values))
def test_fuzz_config_from_mapping(values):
    try:
        cfg = BurnConfig.from_mapping(values, source="fuzz")
    except ConfigError:
        return
    assert isinstance(cfg, BurnConfig)


yaml_lines = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(BurnConfig.keys() + list(RUN_KEYS) + ["bogus"]),
              st.one_of(st.text(max_size=12), finite_ints.map(str), st.floats().map(repr),
                        st.sampled_from(["[1, 2]", "{a: 1}", "~", "yes", "!!binary aGk=", "&x 1", "*x", "'a",
                                         "!!python/object:os.system", "[", "- 1", "2001-12-14", ".nan", "-.inf"]))),
    st.text(max_size=30)), max_size=6)


@FUZZ
@given(lines=yaml_lines, raw=st.binary(max_size=50))
def test_fuzz_yaml_files(tmp_path_factory, lines, raw):
    folder = tmp_path_factory.mktemp("yaml")
    f = folder / "cfg.yaml"
    for content in ("\n".join(lines).encode("utf-8", "surrogatepass"), raw):
        try:
            f.write_bytes(content)
        except Exception:  # noqa: BLE001
            continue
        try:
            merged = load_yaml(f)
            assert isinstance(merged, dict)
            split_settings(merged, source=str(f))
        except ConfigError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")


# Formerly pinned bugs (fixed): huge numbers and deep nesting end in ConfigError too.

@pytest.mark.parametrize("key, value", [("lr", 10 ** 400), ("adam_betas", [10 ** 400, 0.1])], ids=["lr", "adam_betas"])
def test_huge_integer_for_a_float_setting(key, value):
    with pytest.raises(ConfigError):
        BurnConfig.from_mapping({key: value})


def test_deeply_nested_yaml(tmp_path):
    f = tmp_path / "deep.yaml"
    f.write_text("[" * 5000)
    with pytest.raises(ConfigError):
        load_yaml(f)
