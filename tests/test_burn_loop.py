"""BURN's two-phase loop: selections, determinism, resume after an interruption, NaN handling."""
import copy
import os
import signal
import subprocess
import sys
import time


import pytest
import torch

from burn_plugin.core.burn import BurnData, run_burn
from burn_plugin.core.config import BurnConfig
from burn_plugin.errors import EmptySelectionError
from burn_plugin.fileio import FileBoundaryCache, FileCheckpoint

from conftest import burn_problem

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def small_problem():
    return burn_problem(200, MEAN, STD)


def cfg(**kw):
    base = dict(rounds=3, epochs=1, k_p0=5, k_pT=10, k_c0=10, k_cT=20, batch_size=32, boundary_batch_size=64,
                max_iter=10, lr=1e-3)
    base.update(kw)
    return BurnConfig(**base)


@pytest.fixture(scope="module")
def reference_run(small_problem):
    model, data = small_problem
    return run_burn(copy.deepcopy(model), data, cfg(), progress=False)


def test_selection_sizes_follow_the_schedule_and_phase1_ranks_by_distance(small_problem, reference_run):
    model, data = small_problem
    res = reference_run
    assert [len(s.poison) for s in res.selections] == [10, 13, 17, 20]   # round(200 * k_p^t %)
    assert [len(s.clean) for s in res.selections] == [0, 27, 33, 40]     # round(200 * k_c^t %); none in phase 1
    top = torch.argsort(res.boundary.distance, descending=True, stable=True)[:10]
    assert sorted(res.selections[0].poison.tolist()) == sorted(top.tolist())
    for s in res.selections[1:]:
        assert not set(s.poison.tolist()) & set(s.clean.tolist())
    assert [h["round"] for h in res.history] == [0, 1, 2, 3]
    # relabelled samples get the adversarial label: the count of changed labels is reported per round
    s0 = res.selections[0].poison
    assert res.history[0]["n_relabelled"] == int((res.boundary.adv_label[s0] != data.y[s0]).sum())


def test_same_seed_same_device_gives_identical_scores_selections_and_weights(small_problem, reference_run, device):
    model, data = small_problem
    a = reference_run if device == "cpu" else run_burn(copy.deepcopy(model), data, cfg(), progress=False, device=device)
    b = run_burn(copy.deepcopy(model), data, cfg(), progress=False, device=device)
    assert torch.equal(a.boundary.distance, b.boundary.distance)
    assert torch.equal(a.final_score, b.final_score)
    for sa, sb in zip(a.selections, b.selections):
        assert torch.equal(sa.poison, sb.poison) and torch.equal(sa.clean, sb.clean)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = run_burn(copy.deepcopy(model), data, cfg(random_seed=1), progress=False, device=device)
    assert any(not torch.equal(va, vc) for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values()))


def test_channels_last_changes_speed_not_results(small_problem, reference_run):
    model, data = small_problem
    on = run_burn(copy.deepcopy(model), data, cfg(channels_last=True), progress=False)
    off = reference_run   # channels_last=False is the default
    assert torch.allclose(on.boundary.distance, off.boundary.distance, rtol=1e-4, atol=1e-6)
    # DeepFool's step lands on the boundary (the overshoot and nudge push it just past), so float
    # rounding can decide on which side an iterate ends: one layout reports the crossing, the other
    # not yet (its label is then still the clean prediction). That is the only way the adversarial
    # labels may differ: wherever they do, exactly one of the two runs did not converge.
    a, b = on.boundary, off.boundary
    differ = a.adv_label != b.adv_label
    assert torch.equal(a.clean_label, b.clean_label)
    assert bool((a.converged[differ] ^ b.converged[differ]).all()), differ.nonzero().flatten().tolist()
    unconverged = torch.where(a.converged, b.adv_label, a.adv_label)[differ]
    assert torch.equal(unconverged, a.clean_label[differ])
    assert [s.poison.tolist() for s in on.selections] == [s.poison.tolist() for s in off.selections]
    for k, a in on.model.state_dict().items():
        assert a.is_contiguous(), f"{k} handed back in channels_last layout"


def test_resume_after_interruption_equals_uninterrupted_run(small_problem, reference_run, tmp_path):
    model, data = small_problem
    full = reference_run

    class Killed(Exception):
        pass

    def stop_after_round_1(row):
        if row["round"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_burn(copy.deepcopy(model), data, cfg(), progress=False, checkpoint=FileCheckpoint(tmp_path),
                 on_round=stop_after_round_1)
    assert (tmp_path / "last.pt").is_file()
    resumed = run_burn(copy.deepcopy(model), data, cfg(), progress=False, checkpoint=FileCheckpoint(tmp_path),
                       resume=True)
    assert [h["round"] for h in resumed.history] == [0, 1, 2, 3]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert torch.equal(full.final_score, resumed.final_score)


def test_nan_loss_stops_and_keeps_last_good_round(small_problem):
    model, data = small_problem
    res = run_burn(copy.deepcopy(model), data, cfg(lr=1e30, rounds=2), progress=False)
    assert res.stopped_early is not None and "kept the model of round" in res.stopped_early
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values() if v.is_floating_point())
    assert res.completed_rounds == len(res.history) < 4


def test_empty_selection_fails_before_any_work(small_problem):
    model, data = small_problem
    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(EmptySelectionError):
        run_burn(m, data, cfg(k_p0=0.1), progress=False)
    for k, v in m.state_dict().items():   # the caller's model is untouched, layout included
        assert v.is_contiguous() and torch.equal(v, before[k]), k


def test_poison_flags_are_not_an_input():
    import inspect

    params = inspect.signature(run_burn).parameters
    assert not any("poison" in p or "flag" in p for p in params)
    assert set(BurnData.__dataclass_fields__) == {"x", "y", "mean", "std", "hflip"}


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")
def test_killed_cli_run_resumes_to_the_same_result(trained_record, tmp_path):
    """Kill a real `burn defend` process after its first round checkpoint; --resume finishes it."""
    args = [sys.executable, "-m", "burn_plugin", "-q", "defend", "--attack_folder", str(trained_record),
            "--rounds", "3", "--epochs", "3", "--k_p0", "2", "--k_pT", "4", "--k_c0", "10", "--k_cT", "20",
            "--max_iter", "5", "--lr", "0.001"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(args + ["--output_dir", str(ref_dir)], check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(args + ["--output_dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run_dir / "checkpoint" / "last.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run_dir / "defense_result.pt").exists()
    done = subprocess.run(args + ["--output_dir", str(run_dir), "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a = torch.load(ref_dir / "defense_result.pt", weights_only=True)["model"]
    b = torch.load(run_dir / "defense_result.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_boundary_method_reaches_the_analysis_and_has_its_own_cache_entry(small_problem, tmp_path):
    from burn_plugin.core.boundary import boundary_distances
    from burn_plugin.core.burn import analyse_boundary
    from burn_plugin.core.tensors import PixelSpaceModel

    model, data = small_problem
    model = copy.deepcopy(model)
    # box-aware steps: on this random network with clipping after each step (the default) SDF's
    # projections and line search find no shorter point than DeepFool's
    df = analyse_boundary(model, data, cfg(box_aware=True), cache=FileBoundaryCache(tmp_path))
    sdf = analyse_boundary(model, data, cfg(boundary_method="superdeepfool", box_aware=True),
                           cache=FileBoundaryCache(tmp_path))
    assert len(list(tmp_path.glob("boundary_*.pt"))) == 2   # one cache file per method
    direct = boundary_distances(PixelSpaceModel(model, MEAN, STD), data.x, max_iter=10, method="superdeepfool",
                                box_aware=True)
    assert torch.allclose(sdf.distance, direct.distance)
    assert bool((sdf.distance <= df.distance * (1 + 1e-5) + 1e-7).all())   # SDF only shortens DeepFool's path
    assert float(sdf.distance.mean()) < float(df.distance.mean())
    again = analyse_boundary(model, data, cfg(boundary_method="superdeepfool", box_aware=True),
                             cache=FileBoundaryCache(tmp_path))
    assert torch.equal(again.distance, sdf.distance)
    with pytest.raises(Exception, match="boundary_method"):
        BurnConfig(boundary_method="fab")


# ------------------------------------------------------------------------------------------------
# detectors in the loop (core/detectors.py)

def test_default_detector_is_the_papers_bd_bit_for_bit(reference_run):
    from burn_plugin.core.scores import boundary_score

    res = reference_run
    assert res.detector == "boundary" and "detector_s" not in res.timings
    assert torch.equal(res.bd, boundary_score(res.boundary.distance))


def test_another_detector_replaces_bd_and_keeps_the_adversarial_labels(small_problem, reference_run):
    from burn_plugin.core.detectors import detector_scores

    model, data = small_problem
    res = run_burn(copy.deepcopy(model), data, cfg(detector="activation_clustering"), progress=False)
    assert res.detector == "activation_clustering" and res.timings["detector_s"] >= 0
    assert torch.equal(res.boundary.distance, reference_run.boundary.distance)   # the analysis itself is unchanged
    frozen = copy.deepcopy(model).eval()
    expected = detector_scores("activation_clustering", frozen, data.x, data.y, mean=MEAN, std=STD,
                               boundary_distance=res.boundary.distance, batch_size=64, seed=0)
    assert torch.equal(res.bd, expected)
    top = torch.argsort(res.bd, descending=True, stable=True)[:10]
    assert sorted(res.selections[0].poison.tolist()) == sorted(top.tolist())
    s0 = res.selections[0].poison   # relabelled to the boundary analysis's adversarial label
    assert res.history[0]["n_relabelled"] == int((res.boundary.adv_label[s0] != data.y[s0]).sum())


def test_detector_setting_is_checked():
    from burn_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="detector must be one of"):
        BurnConfig(detector="nope")
    with pytest.raises(ConfigError, match="distance_model: frozen"):
        BurnConfig(detector="spectral", distance_model="current")


def test_per_label_clean_selection_in_the_loop(small_problem):
    model, data = small_problem
    res = run_burn(copy.deepcopy(model), data, cfg(clean_selection="per_label", rounds=1), progress=False)
    clean = res.selections[1].clean
    share = torch.bincount(data.y[clean], minlength=4).double() / len(clean)
    expected = torch.bincount(data.y, minlength=4).double() / len(data.y)
    assert len(clean) == 40 and float((share - expected).abs().max()) <= 1 / 40 + 1e-12   # rounding: one sample
    with pytest.raises(Exception, match="clean_selection"):
        BurnConfig(clean_selection="balanced")


def test_clean_ranking_boundary_changes_nothing_for_the_boundary_detector(small_problem, reference_run):
    model, data = small_problem
    res = run_burn(copy.deepcopy(model), data, cfg(clean_ranking="boundary"), progress=False)
    for a, b in zip(reference_run.selections, res.selections):
        assert torch.equal(a.poison, b.poison) and torch.equal(a.clean, b.clean)
    assert all(torch.equal(u, v) for u, v in zip(reference_run.model.state_dict().values(),
                                                  res.model.state_dict().values()))


def test_clean_ranking_boundary_takes_the_clean_set_nearest_the_boundary(small_problem):
    from burn_plugin.core.scores import boundary_score, composite_score

    model, data = small_problem
    res = run_burn(copy.deepcopy(model), data, cfg(detector="spectral", clean_ranking="boundary", rounds=1),
                   progress=False)
    s = res.selections[1]
    assert torch.equal(s.poison, torch.argsort(res.final_score, descending=True, stable=True)[:len(s.poison)])
    clean_s = composite_score(boundary_score(res.boundary.distance), res.final_pd, s.w)
    rest = torch.ones(len(clean_s), dtype=torch.bool)
    rest[s.poison] = False
    assert float(clean_s[s.clean].max()) <= float(clean_s[rest & ~torch.isin(torch.arange(len(rest)), s.clean)].min())


def test_clean_veto_keeps_the_detectors_top_out_of_every_clean_set(small_problem, reference_run):
    model, data = small_problem
    rule = dict(clean_selection="per_label", clean_ranking="boundary", detector="spectral")
    res = run_burn(copy.deepcopy(model), data, cfg(clean_veto=30, **rule), progress=False)
    free = run_burn(copy.deepcopy(model), data, cfg(**rule), progress=False)
    vetoed = torch.argsort(res.bd, descending=True, stable=True)[:60]          # 30 % of 200 by phase 1's score
    for s, ref in zip(res.selections[1:], free.selections[1:]):
        assert len(s.clean) == len(ref.clean) and not torch.isin(s.clean, vetoed).any()
    assert torch.isin(torch.cat([s.clean for s in free.selections[1:]]), vetoed).any()   # it had work to do
    # a veto of 0 is the paper's selection, bit for bit
    zero = run_burn(copy.deepcopy(model), data, cfg(clean_veto=0.0), progress=False)
    assert all(torch.equal(u, v) for u, v in zip(reference_run.model.state_dict().values(),
                                                  zero.model.state_dict().values()))


def test_k_pT_estimate_sets_the_last_rounds_share_from_scans_estimate(small_problem):
    """k_pT_estimate m: the schedule runs from k_p0 to m x SCAn's estimated share (clipped to [k_p0,
    100 - k_cT]); the estimate reaches the result; 0 is the fixed k_pT, bit for bit."""
    from burn_plugin.core.burn import estimated_k_pT, schedule_counts

    model, data = small_problem
    rule = dict(detector="scan", rounds=2)
    fixed = run_burn(copy.deepcopy(model), data, cfg(**rule), progress=False)
    zero = run_burn(copy.deepcopy(model), data, cfg(k_pT_estimate=0.0, **rule), progress=False)
    assert all(torch.equal(u, v) for u, v in zip(fixed.model.state_dict().values(), zero.model.state_dict().values()))
    est = run_burn(copy.deepcopy(model), data, cfg(k_pT_estimate=1.5, **rule), progress=False)
    n_est = est.poison_estimate
    assert fixed.poison_estimate == n_est and isinstance(n_est, int) and 0 < n_est < len(data)
    k_pT = min(max(1.5 * 100.0 * n_est / len(data), 5.0), 80.0)
    assert estimated_k_pT(cfg(k_pT_estimate=1.5, **rule), n_est, len(data)) == pytest.approx(k_pT)
    sizes = [c[2] for c in schedule_counts(cfg(k_pT=k_pT, **rule), len(data))]
    assert [len(s.poison) for s in est.selections] == sizes
    assert sizes[0] == 10 and sizes[-1] == round(len(data) * k_pT / 100)
    # the clip: a factor that would ask for more than 100 - k_cT % stops there
    assert estimated_k_pT(cfg(k_pT_estimate=10.0, **rule), len(data), len(data)) == 80.0
    assert estimated_k_pT(cfg(k_pT_estimate=1.0, **rule), 0, len(data)) == 5.0


def test_w_zero_relabels_the_detectors_own_top_every_round(small_problem):
    """w0 = wT = 0 (S = BD): every round relabels the detector's top by its own score, so that with
    k_pT_estimate 1 the last round relabels exactly SCAn's estimate of the poisoned count; no clean set
    takes a vetoed sample; the final score is BD itself."""
    model, data = small_problem
    rule = dict(detector="scan", rounds=2, k_pT_estimate=1.0, w0=0.0, wT=0.0, clean_veto=20,
                clean_selection="per_label", clean_ranking="boundary")
    res = run_burn(copy.deepcopy(model), data, cfg(**rule), progress=False)
    top = torch.argsort(res.bd, descending=True, stable=True)
    for s in res.selections:
        assert torch.equal(s.poison, top[:len(s.poison)])
        assert not torch.isin(s.clean, top[:40]).any()        # the veto: 20 % of 200
    assert len(res.selections[-1].poison) == max(res.poison_estimate, 10)   # clipped below at k_p0 (5 %)
    assert torch.equal(res.final_score, res.bd)


def test_k_pT_estimate_needs_a_detector_that_estimates():
    from burn_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="k_pT_estimate needs a detector that estimates"):
        BurnConfig(detector="spectral", k_pT_estimate=1.0)
    with pytest.raises(ConfigError, match="k_pT_estimate is a factor"):
        BurnConfig(detector="scan", k_pT_estimate=-1.0)
