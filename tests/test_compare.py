"""``burn compare``: gathering (re-evaluation and CSV fallbacks under BackdoorBench's file names),
DER, the rendered tables, filters and the command line.

One record tree is built per module: a tiny BackdoorBench-layout attack record on synthetic
MNIST-layout data, a copy of it with another attack model, and a record whose ``attack_result.pt`` is
unreadable; the defense folders hold what each BackdoorBench defense writes (interface.md 1.5, 1.6).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from burn_plugin.bench.metrics import evaluate
from burn_plugin.bench.models import build_model
from burn_plugin.bench.records import load_record, make_state, save_record, write_poisoned_split
from burn_plugin.core.tensors import PixelSpaceModel
from burn_plugin.errors import BadInputError, RecordNotFoundError
from burn_plugin.fileio import save_torch, torch_load
from burn_plugin.report.compare import (NO_DEFENSE, display_name, gather_results, read_summary_row,
                                        render_latex, render_markdown, wide_table)

from synthetic import class_images, make_mnist_layout

FT_CLASS, BURN_CLASS, BLENDED_ATTACK_CLASS, BLENDED_BURN_CLASS = 3, 5, 0, 7

# BackdoorBench summary files with their real rows/columns (interface.md 1.6); "last" is what counts
FT_STYLE = (",epoch,batch,train_epoch_loss_avg_over_batch,train_acc,clean_test_loss_avg_over_batch,"
            "bd_test_loss_avg_over_batch,test_acc,test_asr,test_ra\n"
            "last,{e},3,0.51,0.9,0.4,3.1,{acc},{asr},{ra}\n"
            "valid_max,{e},3,1.2,0.95,0.9,5.0,0.99,0.99,0.99\n"
            "exist_nan_value,False,False,False,False,False,False,False,False,False\n")
SAU_STYLE = (",epoch,clean_test_loss_avg_over_batch,bd_test_loss_avg_over_batch,ra_test_loss_avg_over_batch,"
             "test_acc,test_asr,test_ra\n"
             "last,19,0.41,2.2,0.7,{acc},{asr},{ra}\n"
             "valid_max,19,0.9,nan_value,0.9,0.99,0.99,0.99\n"
             "exist_nan_value,False,False,True,False,False,False,False\n")
ANP_STYLE = (",threshold,value,clean_test_loss_avg_over_batch,bd_test_loss_avg_over_batch,test_acc,test_asr,test_ra\n"
             "0,0.2,0.2,0.55,4.0,{acc},{asr},{ra}\n")

CSV_NUMBERS = {
    ("badnet_x", "ft"): (0.5011, 0.5022, 0.5033),          # ignored: ft is re-evaluated
    ("badnet_x", "fp"): (0.6011, 0.6022, 0.6033),
    ("badnet_x", "nad"): (0.6111, 0.6122, 0.6133),
    ("badnet_x", "sau"): (0.8712, 0.0345, 0.8211),
    ("badnet_x", "anp"): (0.8601, 0.0311, 0.8012),
    ("badnet_x", "ft-sam"): (0.8423, 0.1034, 0.7731),
    ("badnet_x", "i-bau"): (0.8305, 0.0712, 0.7654),
    ("badnet_x", "burn"): (0.7011, 0.7022, 0.7033),        # ignored: burn is re-evaluated
    ("blended_x", "sau"): (0.0812, 0.9345, 0.0611),
    ("broken_x", NO_DEFENSE): (0.9112, 0.9876, 0.0101),
    ("broken_x", "sau"): (0.8801, 0.0201, 0.8502),
    ("broken_x", "fp"): (0.8702, 0.5507, 0.4003),
}


def _summary(path: Path, style: str, key, epochs=4) -> None:
    acc, asr, ra = CSV_NUMBERS[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(style.format(e=epochs, acc=acc, asr=asr, ra=ra))


def _constant_sd(sd: dict, cls: int) -> dict:
    """A state dict whose model predicts ``cls`` for every input."""
    out = {k: v.clone() for k, v in sd.items()}
    out["linear.weight"].zero_()
    out["linear.bias"].zero_()
    out["linear.bias"][cls] = 100.0
    return out


def _perturbed_sd(sd: dict, seed: int, scale=0.3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * v.std().nan_to_num(0) * torch.randn(v.shape, generator=g)
                if v.is_floating_point() and v.numel() > 1 else v.clone()) for k, v in sd.items()}


def _defense_result(folder: Path, sd: dict, model_name="smallresnet", num_classes=10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_torch({"model_name": model_name, "num_classes": num_classes, "model": sd}, folder / "defense_result.pt")


def _make_record(base: Path, folder: Path) -> dict:
    """A BadNets-style all-to-one record (target 0) in BackdoorBench's layout, written with the record
    writers; the model is a seeded, untrained SmallResNet (training is not what is tested here)."""
    n_train, n_test = 100, 60
    make_mnist_layout(base / "data" / "mnist", n_train=n_train, n_test=n_test)
    xtr, ytr = class_images(n_train, 28, 28, 1, 10, 0)  # what make_mnist_layout wrote
    xte, yte = class_images(n_test, 28, 28, 1, 10, 1)

    def poison(x, y, idx):
        imgs = {int(i): np.where(np.arange(28)[:, None] >= 25, 255, x[i]).astype(np.uint8) for i in idx}
        return imgs, {int(i): 0 for i in idx}, {int(i): int(y[i]) for i in idx}

    tr_idx = np.arange(0, n_train, 10)
    te_idx = np.flatnonzero(yte != 0)
    states = []
    for split, x, y, idx, n in (("bd_train_dataset", xtr, ytr, tr_idx, n_train),
                                ("bd_test_dataset", xte, yte, te_idx, n_test)):
        data_dict = write_poisoned_split(folder, split, *poison(x, y, idx))
        flags = np.zeros(n)
        flags[idx] = 1
        visible = np.arange(n) if split == "bd_train_dataset" else idx
        states.append(make_state(data_dict, flags, visible, f"./record/{folder.name}/{split}"))
    torch.manual_seed(0)
    sd = build_model("smallresnet", 10).state_dict()
    save_record(folder, model_name="smallresnet", num_classes=10, state_dict=sd, dataset="mnist",
                bd_train=states[0], bd_test=states[1])
    (folder / "attack_df_summary.csv").write_text(FT_STYLE.format(e=4, acc=0.9321, asr=0.9876, ra=0.0111))
    return {k: v.clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("bb")
    rec = base / "record"
    bad = rec / "badnet_x"
    attack_sd = _make_record(base, bad)

    # a second attack: same poisoned data, another attack model (predicts the target class 0 always)
    blended = rec / "blended_x"
    shutil.copytree(bad, blended)
    obj = torch_load(blended / "attack_result.pt")
    obj["model"] = _constant_sd(attack_sd, BLENDED_ATTACK_CLASS)
    save_torch(obj, blended / "attack_result.pt")

    sds = {}
    d = bad / "defense"
    # ft: re-evaluated model (always class 3); its CSV must be ignored
    sds["ft"] = _constant_sd(attack_sd, FT_CLASS)
    _defense_result(d / "ft", sds["ft"])
    _summary(d / "ft" / "ft_df_summary.csv", FT_STYLE, ("badnet_x", "ft"))
    (d / "ft" / "run.json").write_text(json.dumps({"wall_seconds": 42.0, "method": "ft"}))
    # fp: pruned reparametrisation (linear.weight_orig * linear.weight_mask)
    pert = _perturbed_sd(attack_sd, 1)
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(pert["linear.weight"].shape, generator=g) > 0.5).float()
    fp_sd = {k: v for k, v in pert.items() if k != "linear.weight"}
    fp_sd["linear.weight_orig"] = pert["linear.weight"].clone()
    fp_sd["linear.weight_mask"] = mask
    sds["fp_unpruned"] = dict(pert, **{"linear.weight": pert["linear.weight"] * mask})
    _defense_result(d / "fp", fp_sd)
    _summary(d / "fp" / "finetune_df_summary.csv", FT_STYLE, ("badnet_x", "fp"))
    # nad: DataParallel "module." prefix
    sds["nad"] = _perturbed_sd(attack_sd, 3)
    _defense_result(d / "nad", {f"module.{k}": v for k, v in sds["nad"].items()})
    _summary(d / "nad" / "nad_df_summary.csv", FT_STYLE, ("badnet_x", "nad"))
    # sau: summary CSV only, no model
    _summary(d / "sau" / "sau_df_summary.csv", SAU_STYLE, ("badnet_x", "sau"))
    # anp: the empty dict BackdoorBench writes after a NaN loss + its single-row summary
    (d / "anp").mkdir()
    save_torch({}, d / "anp" / "defense_result.pt")
    _summary(d / "anp" / "anp_df_summary.csv", ANP_STYLE, ("badnet_x", "anp"))
    # ft-sam: unknown model name; its summary lives in log/d-sam_df_summary.csv
    _defense_result(d / "ft-sam", attack_sd, model_name="not_a_model")
    _summary(d / "ft-sam" / "log" / "d-sam_df_summary.csv", FT_STYLE.replace(",epoch,batch", ",ep,b"),
             ("badnet_x", "ft-sam"))
    # i-bau: a 5-class model for a 10-class record
    _defense_result(d / "i-bau", build_model("smallresnet", 5).state_dict(), num_classes=5)
    _summary(d / "i-bau" / "i-bau_df_summary.csv", SAU_STYLE, ("badnet_x", "i-bau"))
    # burn: our own output
    sds["burn"] = _constant_sd(attack_sd, BURN_CLASS)
    _defense_result(d / "burn", sds["burn"])
    _summary(d / "burn" / "burn_df_summary.csv", FT_STYLE, ("badnet_x", "burn"))
    (d / "burn" / "run.json").write_text(json.dumps({"wall_seconds": 3725.0, "method": "burn",
                                                     "data_used": "poisoned training set (no clean data)"}))
    # ulrl: an unfinished run (only a log folder); .burn_cache: never a defense
    (d / "ulrl" / "log").mkdir(parents=True)
    (d / ".burn_cache").mkdir()
    _defense_result(d / ".burn_cache", attack_sd)

    d2 = blended / "defense"
    _summary(d2 / "sau" / "sau_df_summary.csv", SAU_STYLE, ("blended_x", "sau"))
    sds["blended_burn"] = _constant_sd(attack_sd, BLENDED_BURN_CLASS)
    _defense_result(d2 / "burn", sds["blended_burn"])
    rng = np.random.default_rng(0)
    flag = np.arange(300) % 10 == 0
    np.savez(d2 / "burn" / "scores.npz", distance=np.where(flag, 3.0, 1.0) + rng.random(300),
             report_poison_flag=flag, final_score=rng.random(300))
    pd.DataFrame({"epoch": [0, 1], "round": [0, 1], "n_poison": [10, 20], "n_clean": [100, 90],
                  "test_acc": [0.5, 0.6], "test_asr": [0.4, 0.1], "test_ra": [0.3, 0.5]}).to_csv(
        d2 / "burn" / "burn_df.csv", index=False)

    broken = rec / "broken_x"
    broken.mkdir()
    (broken / "attack_result.pt").write_bytes(b"not a torch file")
    _summary(broken / "attack_df_summary.csv", FT_STYLE, ("broken_x", NO_DEFENSE))
    _summary(broken / "defense" / "sau" / "sau_df_summary.csv", SAU_STYLE, ("broken_x", "sau"))
    _summary(broken / "defense" / "fp" / "finetune_df_summary.csv", FT_STYLE, ("broken_x", "fp"))
    _defense_result(broken / "defense" / "fp", attack_sd)

    (rec / "empty_dir").mkdir()  # no attack_result.pt: not an attack
    (rec / "notes.txt").write_text("x")
    return {"root": rec, "sds": sds, "attack_sd": attack_sd}


@pytest.fixture(scope="module")
def results(tree):
    return gather_results(tree["root"])


@pytest.fixture(scope="module")
def record(tree):
    return load_record(tree["root"] / "badnet_x")


def _row(df, attack, defense):
    m = df[(df["attack"] == attack) & (df["defense"] == defense)]
    assert len(m) == 1, (attack, defense, len(m))
    return m.iloc[0]


def _eval_sd(record, sd) -> dict:
    model = build_model("smallresnet", 10)
    model.load_state_dict(sd)
    return evaluate(PixelSpaceModel(model, record.spec.mean3, record.spec.std3),
                    record.tensors("clean_test"), record.tensors("bd_test"))


def _assert_metrics(row, expected):
    for k in ("test_acc", "test_asr", "test_ra"):
        assert row[k] == expected[k], (row["defense"], k, row[k], expected[k])


# ------------------------------------------------------------------------------------------------
def test_walk_finds_attacks_and_defenses(results):
    assert list(dict.fromkeys(results["attack"])) == ["badnet_x", "blended_x", "broken_x"]
    bad = results[results["attack"] == "badnet_x"]["defense"].tolist()
    assert bad[0] == NO_DEFENSE
    assert set(bad[1:]) == {"ft", "fp", "nad", "sau", "anp", "ft-sam", "i-bau", "burn", "ulrl"}
    assert ".burn_cache" not in results["defense"].values


def test_reevaluated_numbers_equal_the_evaluator(results, record, tree):
    _assert_metrics(_row(results, "badnet_x", NO_DEFENSE), _eval_sd(record, tree["attack_sd"]))
    for name in ("ft", "burn"):
        r = _row(results, "badnet_x", name)
        assert r["source"] == "re-evaluated"
        _assert_metrics(r, _eval_sd(record, tree["sds"][name]))
    assert _row(results, "badnet_x", "ft")["test_acc"] != CSV_NUMBERS[("badnet_x", "ft")][0]


def test_constant_models_give_the_label_shares(results, record):
    """Independent of the evaluator: a model that always says c scores the share of label c."""
    clean, bd = record.tensors("clean_test"), record.tensors("bd_test")
    for name, c in (("ft", FT_CLASS), ("burn", BURN_CLASS)):
        r = _row(results, "badnet_x", name)
        assert r["test_acc"] == pytest.approx(float((clean.label == c).double().mean()), abs=1e-12)
        assert r["test_asr"] == pytest.approx(float((bd.label == c).double().mean()), abs=1e-12)
        assert r["test_ra"] == pytest.approx(float((bd.original_label == c).double().mean()), abs=1e-12)
    b = _row(results, "blended_x", NO_DEFENSE)  # attack model that always predicts the target 0
    assert b["source"] == "re-evaluated"
    assert b["test_asr"] == 1.0 and b["test_ra"] == 0.0
    assert b["test_acc"] == pytest.approx(float((clean.label == 0).double().mean()), abs=1e-12)


def test_pruned_and_prefixed_state_dicts(results, record, tree):
    fp = _row(results, "badnet_x", "fp")
    assert fp["source"] == "re-evaluated"
    _assert_metrics(fp, _eval_sd(record, tree["sds"]["fp_unpruned"]))
    nad = _row(results, "badnet_x", "nad")
    assert nad["source"] == "re-evaluated"
    _assert_metrics(nad, _eval_sd(record, tree["sds"]["nad"]))


@pytest.mark.parametrize("defense,reason", [("sau", "no defense_result.pt"), ("anp", "empty"),
                                            ("ft-sam", "not_a_model"), ("i-bau", "5-class")])
def test_csv_fallbacks_use_backdoorbench_file_names(results, defense, reason):
    r = _row(results, "badnet_x", defense)
    assert r["source"] == "csv"
    assert (r["test_acc"], r["test_asr"], r["test_ra"]) == CSV_NUMBERS[("badnet_x", defense)]
    assert reason in r["note"]
    where = {"sau": "sau_df_summary.csv row last", "anp": "anp_df_summary.csv row 0",
             "ft-sam": "log/d-sam_df_summary.csv row last", "i-bau": "i-bau_df_summary.csv row last"}[defense]
    assert where in r["note"]


def test_missing_defense_is_listed_without_numbers(results):
    r = _row(results, "badnet_x", "ulrl")
    assert r["source"] == "missing"
    assert math.isnan(r["test_acc"]) and math.isnan(r["der"])
    assert "ulrl_df_summary.csv" in r["note"]


def test_unreadable_record_falls_back_to_csv(results):
    b = _row(results, "broken_x", NO_DEFENSE)
    assert b["source"] == "csv"
    assert (b["test_acc"], b["test_asr"], b["test_ra"]) == CSV_NUMBERS[("broken_x", NO_DEFENSE)]
    assert "record not loaded" in b["note"]
    for name in ("sau", "fp"):
        r = _row(results, "broken_x", name)
        assert r["source"] == "csv"
        assert (r["test_acc"], r["test_asr"], r["test_ra"]) == CSV_NUMBERS[("broken_x", name)]


def test_der_follows_the_formula(results):
    n = 0
    for _, r in results[results["defense"] != NO_DEFENSE].iterrows():
        b = _row(results, r["attack"], NO_DEFENSE)
        if math.isnan(r["test_acc"]):
            continue
        expected = (max(0.0, b["test_asr"] - r["test_asr"]) - max(0.0, b["test_acc"] - r["test_acc"]) + 1) / 2
        assert r["der"] == pytest.approx(expected, abs=1e-12)
        rir = (max(0.0, r["test_ra"] - b["test_ra"]) - max(0.0, b["test_acc"] - r["test_acc"]) + 1) / 2
        assert r["rir"] == pytest.approx(rir, abs=1e-12)
        assert r["baseline_source"] == b["source"]
        n += 1
    assert n >= 10
    assert results[results["defense"] == NO_DEFENSE]["der"].isna().all()
    # broken_x: hand-checked (0.9876 - 0.0201 - (0.9112 - 0.8801) + 1) / 2
    assert _row(results, "broken_x", "sau")["der"] == pytest.approx((0.9675 - 0.0311 + 1) / 2, abs=1e-12)


def test_wall_time_and_data_used(results):
    assert _row(results, "badnet_x", "ft")["wall_seconds"] == 42.0
    assert _row(results, "badnet_x", "burn")["wall_seconds"] == 3725.0
    assert math.isnan(_row(results, "badnet_x", "sau")["wall_seconds"])
    assert _row(results, "badnet_x", "burn")["data_used"] == "poisoned training set (no clean data)"
    assert _row(results, "badnet_x", "sau")["data_used"] == "5% clean subset"
    # a plugin run says in its run.json; the built-in table holds only BackdoorBench's own defenses
    assert _row(results, "blended_x", "burn")["data_used"] == ""
    assert _row(results, "badnet_x", "ulrl")["data_used"] == ""


def test_no_reevaluate_reads_only_csv(tree):
    df = gather_results(tree["root"], reevaluate=False, attacks="badnet_x", defenses="ft,anp,burn")
    assert set(df["source"]) == {"csv"}
    assert (_row(df, "badnet_x", "ft")[["test_acc", "test_asr", "test_ra"]].tolist()
            == list(CSV_NUMBERS[("badnet_x", "ft")]))
    assert (_row(df, "badnet_x", "burn")[["test_acc", "test_asr", "test_ra"]].tolist()
            == list(CSV_NUMBERS[("badnet_x", "burn")]))
    base = pd.read_csv(tree["root"] / "badnet_x" / "attack_df_summary.csv", index_col=0).loc["last"]
    assert _row(df, "badnet_x", NO_DEFENSE)["test_acc"] == pytest.approx(float(base["test_acc"]), abs=1e-12)
    assert _row(df, "badnet_x", NO_DEFENSE)["source"] == "csv"


def test_filters(tree):
    df = gather_results(tree["root"], reevaluate=False, attacks=["broken_x", "blended_x"], defenses="sau")
    assert list(dict.fromkeys(df["attack"])) == ["broken_x", "blended_x"]
    assert set(df["defense"]) == {NO_DEFENSE, "sau"}
    with pytest.raises(BadInputError, match="nope"):
        gather_results(tree["root"], reevaluate=False, attacks="badnet_x,nope")
    with pytest.raises(BadInputError, match="available: .*burn"):
        gather_results(tree["root"], reevaluate=False, defenses="dbd")
    with pytest.raises(RecordNotFoundError):
        gather_results(tree["root"] / "missing")
    with pytest.raises(RecordNotFoundError, match="attack_result.pt"):
        gather_results(tree["root"] / "empty_dir")
    # one attack folder given directly
    one = gather_results(tree["root"] / "broken_x", reevaluate=False)
    assert set(one["attack"]) == {"broken_x"}


def test_read_summary_row_rules(tmp_path):
    p = tmp_path / "x_df_summary.csv"
    p.write_text(ANP_STYLE.format(acc=0.5, asr=0.25, ra="nan_value"))
    assert read_summary_row(p, "last") is None  # no row named last: not guessed
    r = read_summary_row(p, 0)
    assert r["test_acc"] == 0.5 and r["test_asr"] == 0.25 and math.isnan(r["test_ra"])
    assert read_summary_row(tmp_path / "absent.csv") is None


# ------------------------------------------------------------------------------------------------
# rendering

def test_wide_table_mean_and_best(results):
    w = wide_table(results, "acc,asr,der")
    assert list(w.index) == ["badnet_x", "blended_x", "broken_x", "Mean"]
    for col in w.columns:
        vals = w[col].iloc[:-1].dropna()
        if len(vals):
            assert w[col].iloc[-1] == pytest.approx(vals.mean(), abs=1e-12)
        else:
            assert math.isnan(w[col].iloc[-1])
    # values are the tidy numbers
    assert w.loc["badnet_x", ("sau", "ACC")] == CSV_NUMBERS[("badnet_x", "sau")][0]
    assert ("burn", "Time") not in w.columns  # not asked for
    assert [d for d, _ in w.columns][:3] == [NO_DEFENSE] * 2 + ["ft"]


def _md_rows(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0].strip("*")] = cells
    return header, rows


def test_markdown_marks_best_der_and_sources(results):
    md = render_markdown(results)
    header, rows = _md_rows(md)
    assert len(rows) == 4 and all(len(c) == len(header) for c in rows.values())
    der_cols = [i for i, h in enumerate(header) if h.endswith(" DER")]
    assert len(der_cols) == 8  # ULRL has no number anywhere: a note, not four empty columns
    assert not any(h.startswith("ULRL") for h in header) and "No numbers for ULRL" in md
    for attack in ("badnet_x", "blended_x", "broken_x"):
        for col, metric, pick in (("der", "DER", max), ("test_asr", "ASR", min)):
            sub = results[(results["attack"] == attack) & (results["defense"] != NO_DEFENSE)].dropna(subset=[col])
            best = pick(sub[col])
            winners = {display_name(r["defense"]) for _, r in sub.iterrows() if r[col] == best}
            cols = [i for i, h in enumerate(header) if h.endswith(f" {metric}") and not h.startswith("No defense")]
            bold = {header[i][: -len(metric) - 1] for i in cols if rows[attack][i].startswith("**")}
            assert bold == winners, (attack, metric, bold, winners)
    # the re-evaluated ft has no dagger, the CSV sau has one, a defense not run on an attack a dash
    i_ft = header.index("FT ACC")
    i_sau = header.index("SAU ACC")
    assert "†" not in rows["badnet_x"][i_ft]
    assert rows["badnet_x"][i_sau].strip("*") == f"{100 * CSV_NUMBERS[('badnet_x', 'sau')][0]:.2f}†"
    assert rows["broken_x"][i_ft] == "–"
    # partial means (‡) never compete for bold in the mean row
    assert all(not c.startswith("**") for c in rows["Mean"][1:] if "‡" in c)
    assert any("‡" in c for c in rows["Mean"][1:])
    # mean over fewer attacks is marked; time where known, in readable units
    assert "‡" not in rows["Mean"][i_sau] and "†" not in rows["Mean"][i_sau]  # all three attacks have SAU
    assert rows["Mean"][header.index("BURN ACC")].strip("*").endswith("‡")  # broken_x has no BURN
    assert rows["badnet_x"][header.index("BURN Time")] == "1.0 h"
    assert rows["badnet_x"][header.index("FT Time")] == "42 s"
    assert "SAU Time" not in header
    assert "Data used:" in md and "BURN: poisoned training set (no clean data)" in md and "SAU: 5% clean subset" in md


def test_markdown_mean_row_values(results):
    md = render_markdown(results, "acc")
    header, rows = _md_rows(md)
    i = header.index("SAU ACC")
    expected = np.mean([CSV_NUMBERS[(a, "sau")][0] for a in ("badnet_x", "blended_x", "broken_x")])
    assert rows["Mean"][i].strip("*").rstrip("†‡") == f"{100 * expected:.2f}"
    assert header == ["Attack", "No defense ACC"] + [h for h in header[2:]]
    assert all(h.endswith(" ACC") for h in header[1:])


def test_mean_row_marks_the_best_complete_mean(tree):
    df = gather_results(tree["root"], reevaluate=False, attacks="badnet_x,broken_x", defenses="fp,sau")
    header, rows = _md_rows(render_markdown(df, "der"))
    assert header == ["Attack", "FP DER", "SAU DER"]
    means = {d: df[df["defense"] == d]["der"].mean() for d in ("fp", "sau")}
    best = max(means, key=means.get)
    assert means["fp"] != means["sau"]
    for d, cell in zip(("fp", "sau"), rows["Mean"][1:]):
        assert cell.strip("*") == f"{100 * means[d]:.2f}"
        assert cell.startswith("**") == (d == best)


def test_latex_table(results):
    tex = render_latex(results)
    assert r"\begin{tabular}" in tex and r"\end{table}" in tex
    assert r"badnet\_x" in tex and "badnet_x" not in tex.replace(r"badnet\_x", "")
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    ncols = len(wide_table(results).columns)
    for ln in body.splitlines():
        if ln.strip() and ln.strip() != r"\midrule":
            assert ln.count("&") - ln.count(r"\&") == ncols, ln
    # best DER of broken_x is the one with the higher DER (sau vs fp)
    broken = [ln for ln in tex.splitlines() if ln.startswith(r"broken\_x")][0]
    der_sau, der_fp = (_row(results, "broken_x", d)["der"] for d in ("sau", "fp"))
    best = max(der_sau, der_fp)
    assert rf"\textbf{{{100 * best:.2f}}}" in broken
    assert r"\multicolumn{3}{c}{No defense}" in tex and r"\multicolumn{4}{c}{SAU}" in tex
    assert r"\multicolumn{5}{c}{BURN}" in tex  # with wall time
    assert r"$^\dagger$" in tex


def test_bad_metric_name(results):
    with pytest.raises(BadInputError, match="speed"):
        render_markdown(results, "acc,speed")


# ------------------------------------------------------------------------------------------------
# command line

def test_cli_compare(tree, tmp_path, capsys):
    from burn_plugin.cli import main

    out = tmp_path / "cmp"
    rc = main(["-q", "compare", str(tree["root"]), "--out", str(out), "--attacks", "blended_x,broken_x",
               "--metrics", "acc,asr,der", "--device", "cpu", "--batch-size", "64"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("| Attack | No defense ACC | No defense ASR | FP ACC | FP ASR | FP DER | SAU ACC |")
    for f in ("comparison.csv", "comparison.md", "comparison.tex", "radar_blended_x.png", "radar_blended_x.pdf",
              "radar_broken_x.png", "radar_broken_x.pdf", "blended_x_burn_roc.png", "blended_x_burn_roc.pdf",
              "blended_x_burn_distance_histogram.png", "blended_x_burn_rounds.pdf"):
        assert (out / f).is_file(), f
    assert (out / "radar_blended_x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "radar_blended_x.pdf").read_bytes()[:5] == b"%PDF-"
    tidy = pd.read_csv(out / "comparison.csv", keep_default_na=False, na_values=[""])
    assert list(tidy.columns) == ["attack", "defense", "label", "test_acc", "test_asr", "test_ra", "der", "rir",
                                  "wall_seconds", "source", "baseline_source", "data_used", "model_name", "note",
                                  "folder"]
    assert tidy["attack"].tolist() == ["blended_x"] * 3 + ["broken_x"] * 3
    r = tidy[(tidy["attack"] == "blended_x") & (tidy["defense"] == "burn")].iloc[0]
    assert r["source"] == "re-evaluated" and r["test_asr"] == 0.0  # always class 7, the target is 0
    r = tidy[(tidy["attack"] == "broken_x") & (tidy["defense"] == "fp")].iloc[0]
    assert (r["test_acc"], r["test_asr"], r["source"]) == (*CSV_NUMBERS[("broken_x", "fp")][:2], "csv")
    assert (out / "comparison.md").read_text() in stdout
    assert not list((tree["root"] / "blended_x" / "defense" / "burn").glob("*.png"))  # records left untouched
    assert "and 10 plot files" in stdout


def test_cli_errors(tree, tmp_path, capsys):
    from burn_plugin.cli import main

    assert main(["compare", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: record folder not found") and err.count("\n") == 1
    assert main(["compare", str(tree["root"]), "--metrics", "acc,bogus", "--out", str(tmp_path / "o")]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_burn_with_another_detector_is_named_after_it(tree, tmp_path):

    src = tree["root"] / "badnet_x" / "defense" / "burn"
    root = tmp_path / "record"
    shutil.copytree(tree["root"] / "badnet_x", root / "badnet_x")
    for folder, detector in (("burn_spectral", "spectral"), ("burn_spectral_again", "spectral")):
        dst = root / "badnet_x" / "defense" / folder
        shutil.copytree(src, dst)
        run = json.loads((dst / "run.json").read_text()) if (dst / "run.json").is_file() else {}
        run.update(method="burn", config={"detector": detector})
        (dst / "run.json").write_text(json.dumps(run))
    names = set(gather_results(root, reevaluate=False)["defense"])
    assert {"burn", "burn[spectral]", "burn_spectral_again[spectral]"} <= names   # each folder keeps one row


def _detection(mean_clean, mean_poison, auroc, precision):
    return {"n_train": 300, "n_poison": 30, "detector": "boundary", "auroc_distance_poison": auroc,
            "auroc_distance_flipped": auroc - 0.01, "auroc_detector_poison": auroc, "mean_distance_clean": mean_clean,
            "mean_distance_poison": mean_poison, "poison_adv_label_is_true_label": 0.8,
            "clean_adv_label_entropy_ratio": 0.9, "clean_adv_label_max_share": 0.2,
            "rounds": [{"round": 0, "poison_set": {"selected": 10, "true_poison": 7, "precision": precision}}]}


def test_across_attacks_table_radar_and_roc(tree, tmp_path):
    """Three attacks, each with a BURN run: the detection table (paper's Table 1) reads run.json, and
    the cross-attack radar (one per defense) and ROC (one curve per attack) are drawn."""
    from burn_plugin.cli import main
    from burn_plugin.report.across import detection_table

    root = tmp_path / "record"
    for i, name in enumerate(("a1", "a2", "a3")):
        shutil.copytree(tree["root"] / "blended_x", root / name)
        burn = root / name / "defense" / "burn"
        (burn / "run.json").write_text(json.dumps({"method": "burn", "config": {"detector": "boundary"},
                                                   "detection": _detection(1.0, 2.0 + i, 0.7 + 0.1 * i, 0.5)}))
        _summary(burn / "burn_df_summary.csv", FT_STYLE, ("badnet_x", "burn"))
    # a BURN run ranked by another detector: in the table, not in the ROC of l(x)
    spectral = root / "a1" / "defense" / "burn_spectral"
    shutil.copytree(root / "a1" / "defense" / "burn", spectral)
    (spectral / "run.json").write_text(json.dumps({"method": "burn", "config": {"detector": "spectral"},
                                                   "detection": dict(_detection(1.0, 2.0, 0.7, 1.0),
                                                                     detector="spectral")}))
    (spectral / "scores.npz").unlink()
    df = gather_results(root, reevaluate=False)
    assert df[df["defense"] == "burn[spectral]"]["folder"].tolist() == ["burn_spectral"]
    r = df[(df["attack"] == "a1") & (df["defense"] == "burn[spectral]")].iloc[0]
    assert r["source"] == "csv" and "burn_df_summary.csv" in r["note"]   # the method's file name, not the folder's
    det = detection_table(df, root)
    assert det["defense"].tolist() == ["burn", "burn[spectral]", "burn", "burn"]
    a3 = det[det["attack"] == "a3"].iloc[0]
    assert (a3["mean_l_clean"], a3["mean_l_poison"], a3["l_ratio"]) == (1.0, 4.0, 4.0)
    assert a3["auroc_l"] == pytest.approx(0.9) and a3["phase1_precision"] == 0.5
    assert det[det["defense"] == "burn[spectral]"]["phase1_precision"].tolist() == [1.0]
    # run.json is a stranger's file: rounds that are not a list of dicts give no precision, and a detector
    # name that is not a short one-line text is not shown (no crash either way)
    for rounds, detector in (("abc", "x\n| injected |"), (["abc"], 7), ([{"poison_set": "abc"}], "d" * 81)):
        (root / "a2" / "defense" / "burn" / "run.json").write_text(json.dumps(
            {"method": "burn", "config": {"detector": "boundary"},
             "detection": dict(_detection(1.0, 3.0, 0.8, 0.5), rounds=rounds, detector=detector)}))
        a2 = detection_table(df, root).query("attack == 'a2'").iloc[0]
        assert a2["detector"] == "-" and math.isnan(a2["phase1_precision"]) and a2["mean_l_poison"] == 3.0
    (root / "a2" / "defense" / "burn" / "run.json").write_text(json.dumps(
        {"method": "burn", "config": {"detector": "boundary"}, "detection": _detection(1.0, 3.0, 0.8, 0.5)}))

    out = tmp_path / "cmp"
    assert main(["-q", "compare", str(root), "--out", str(out), "--no-reevaluate"]) == 0
    for f in ("detection.csv", "detection.md", "radar_by_defense.png", "radar_by_defense.pdf", "roc_by_attack.png",
              "roc_by_attack.pdf"):
        assert (out / f).is_file(), f
    md = (out / "detection.md").read_text()
    assert md.count("\n") == 2 + 4 and "| a3 | burn | boundary | 30 | 1.000 | 4.000 | 4.000 | 0.900 |" in md


def test_burn_settings_name_the_run_alike_on_every_attack():
    from burn_plugin.report.compare import table_name as names

    def table_name(*args):
        return names(*args)[0]

    run = {"method": "burn", "config": {"detector": "spectral", "clean_ranking": "boundary"}}
    assert table_name("anything", run, set()) == "burn[spectral, clean by boundary]"
    assert table_name("x", {"method": "burn", "config": {"detector": "scan", "clean_selection": "per_label"}},
                      set()) == "burn[scan, per_label]"
    assert table_name("burn", {"method": "burn", "config": {"detector": "boundary"}}, set()) == "burn"
    paper = {"detector": "boundary", "boundary_method": "deepfool", "box_aware": False, "clean_ranking": "boundary"}
    assert table_name("b", {"method": "burn", "config": paper}, set()) == "b"
    assert table_name("b", {"method": "burn", "config": {**paper, "box_aware": True}}, set()) == "burn[box-aware]"
    assert table_name("b", {"method": "burn", "config": {**paper, "detector": "spectral", "box_aware": True}},
                      set()) == "burn[spectral, box-aware, clean by boundary]"
    assert table_name("b", {"method": "burn", "config": {**paper, "boundary_method": "superdeepfool"}},
                      set()) == "burn[superdeepfool]"
    assert table_name("f", run, {"burn[spectral, clean by boundary]"}) == "f[spectral, clean by boundary]"
    assert table_name("r", {"method": "burn", "config": {**paper, "detector": "scan", "clean_veto": 20.0}},
                      set()) == "burn[scan, clean by boundary, veto 20%]"
    assert table_name("r", {"method": "burn", "config": {**paper, "clean_veto": 0.0}}, set()) == "r"
    assert table_name("r", {"method": "burn", "config": {**paper, "detector": "scan", "suspect_side": "adv_entropy"}},
                      set()) == "burn[scan, clean by boundary, adv-entropy side]"
    assert table_name("r", {"method": "burn", "config": {**paper, "k_pT": 5.0, "rounds": 20}}, set()) == "burn[k_pT 5]"
    ulrl = {"method": "ulrl", "config": {"clean_source": "burn"}}
    assert table_name("ulrl_on_burn", ulrl, set()) == "ulrl[on burn]"
    assert table_name("u2", {"method": "ulrl", "config": {"clean_source": "burn_balanced"}},
                      set()) == "ulrl[on burn, balanced]"
    assert table_name("ulrl", {"method": "ulrl", "config": {"clean_source": "clean_train"}}, set()) == "ulrl"
    assert table_name("u3", ulrl, {"ulrl[on burn]"}) == "u3[on burn]"
    for given in ("record/x/defense/burn_spectral/scores.npz", "record/x/defense/burn_spectral", "/a/burn_spectral/"):
        on_spectral = {"method": "ulrl", "config": {"clean_source": "burn", "burn_result": given}}
        assert table_name("ulrl_on_spectral", on_spectral, set()) == "ulrl[on burn_spectral]"
    assert table_name("u4", {"method": "ulrl", "config": {"clean_source": "burn", "burn_result": ""}},
                      set()) == "ulrl[on burn]"
    # the label: the registered one with the same settings; a run's own run.json wins over the registry
    assert names("b", {"method": "burn", "config": {**paper, "box_aware": True}}, set())[1] == "BURN[box-aware]"
    assert names("burn", {"method": "burn", "config": paper}, set()) == ("burn", "BURN")
    assert names("b", {"method": "burn", "config": paper, "label": "Mine", "named_settings": ["fast"]},
                 set()) == ("burn[fast]", "Mine[fast]")
    assert names("sau", {}, set()) == ("sau", "SAU")    # BackdoorBench's own defenses write no run.json
    # a run of a defense that is not installed now (a plugin removed since): its folder, not an error
    assert names("toy_old", {"method": "toy_gone", "config": {"scale": 2}}, set()) == ("toy_old", "toy_old")
    # run.json is a stranger's file: a label or setting that is not a short one-line text is not taken
    odd = {"method": "burn", "config": {**paper, "box_aware": True}, "label": "X\n| injected |",
           "named_settings": ["fine", {"not": "text"}]}
    assert names("b", odd, set()) == ("burn[box-aware]", "BURN[box-aware]")
    assert names("b", {**odd, "label": "L" * 81, "named_settings": ["s"] * 33}, set()) == ("burn[box-aware]",
                                                                                           "BURN[box-aware]")
    # so is its data-used text: a multi-line or overlong one falls back to what the table knows of the defense
    from burn_plugin.report.compare import DATA_USED, data_used_of

    assert data_used_of("ft", {"data_used": "5% clean subset of clean_train (100 samples)"}) == \
        "5% clean subset of clean_train (100 samples)"
    for odd_text in ("x\n- injected", "d" * 401, {"not": "text"}, ""):
        assert data_used_of("sau", {"data_used": odd_text}) == DATA_USED.get("sau", "")


def test_roc_takes_the_boundary_run_most_attacks_share(tmp_path):
    """An attack with two boundary-ranked BURN runs contributes the one whose setting the other attacks
    have too; an attack with only another setting is named with its run in the legend."""
    from burn_plugin.report.across import roc_inputs

    rows = []
    runs = {"a1": [("a_box", "burn[box-aware]", True), ("burn", "burn", False)],
            "a2": [("burn", "burn", False), ("burn_spectral", "burn[spectral]", False)],
            "a3": [("burn", "burn", False)]}
    for attack, folders in runs.items():
        for folder, name, box_aware in folders:
            d = tmp_path / attack / "defense" / folder
            d.mkdir(parents=True)
            detector = "spectral" if "spectral" in name else "boundary"
            (d / "run.json").write_text(json.dumps({"method": "burn",
                                                    "config": {"detector": detector, "box_aware": box_aware}}))
            (d / "scores.npz").write_bytes(b"")
            rows.append({"attack": attack, "defense": name, "folder": folder})
    df = pd.DataFrame(rows)
    got = roc_inputs(df, tmp_path)
    assert got == {a: tmp_path / a / "defense" / "burn" / "scores.npz" for a in ("a1", "a2", "a3")}
    only_box = df[~((df["attack"] == "a3") & (df["folder"] == "burn")) & (df["folder"] != "a_box")]
    d = tmp_path / "a3" / "defense" / "a_box"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"method": "burn", "config": {"box_aware": True}}))
    (d / "scores.npz").write_bytes(b"")
    only_box = pd.concat([only_box, pd.DataFrame([{"attack": "a3", "defense": "burn[box-aware]", "folder": "a_box"}])])
    got = roc_inputs(only_box, tmp_path)
    assert set(got) == {"a1 (burn)", "a2 (burn)", "a3 (burn[box-aware])"}
