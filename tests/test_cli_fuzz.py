"""Property over the command line itself: whatever argv a user types, ``burn`` ends with exit 0, 1 or 2,
prints at most a few lines on stderr, and never a traceback (unless ``--debug``).

Hypothesis draws a subcommand, then tokens from its own flags and from values that break things:
numbers out of range, words, an over-long path component, a file where a folder belongs, a missing
path, a real small record. The few entry points that would train for minutes on valid input
(``run_attack``, ``run_demo``) are replaced by stand-ins that return at once, so every example ends in
well under a second; everything in front of them (parsing, validation, loading) is the real code.
"""
from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from burn_plugin import cli
from conftest import build_hand_record

MAX_STDERR_LINES = 3


def subcommand_flags() -> dict[str, list[str]]:
    cli._load_plugins()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    # --debug asks for the traceback: the one case where one is right
    return {name: sorted(o for a in p._actions for o in a.option_strings
                         if o.startswith("--") and o not in ("--help", "--debug"))
            for name, p in sub.choices.items()}


FLAGS = subcommand_flags()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clifuzz")
    hr = build_hand_record(tmp / "BB")
    (tmp / "a_file.txt").write_text("not a record")
    return {"RECORD": str(hr.folder), "ROOT": str(hr.root), "DATA": str(hr.root / "data"), "FILE": str(tmp / "a_file.txt"),
            "MISSING": str(tmp / "missing"), "LONG": str(tmp / ("x" * 300)), "OUT": str(tmp / "out")}


VALUES = ["0", "1", "-1", "3", "0.5", "1e9", "nan", "inf", "abc", "", "cpu", "cuda", "mps", "mnist", "cifar10",
          "svhn", "badnet", "blended", "smallresnet", "nope", "burn", "ulrl", "ft", "fp", "true", "all2all",
          "RECORD", "ROOT", "FILE", "MISSING", "LONG", "OUT"]


#: a valid start per subcommand, so that the drawn tokens also reach validation and loading, not only argparse
BASE = {"info": ["RECORD"], "defend": ["--attack_folder", "RECORD"], "compare": ["ROOT"],
        "attack": ["--dataset", "mnist", "--dataset_path", "DATA", "--out", "OUT"], "register": ["--bb-root", "ROOT"],
        "doctor": ["--bb-root", "ROOT"], "sweep": ["--bb-root", "ROOT", "--dry-run"], "demo": ["--out", "OUT"]}


@st.composite
def argvs(draw):
    name = draw(st.sampled_from(sorted(FLAGS)))
    base = BASE.get(name, []) if draw(st.booleans()) else []
    tokens = base + draw(st.lists(st.one_of(st.sampled_from(FLAGS[name] or ["--x"]), st.sampled_from(VALUES),
                                     st.text(max_size=6)), max_size=6))
    return [name, *tokens]


@pytest.fixture(autouse=True)
def no_long_training(monkeypatch):
    """Valid attack/demo input would train for minutes: stop at the point where the work begins."""
    from burn_plugin import demo
    from burn_plugin.bench import attacks

    monkeypatch.setattr(attacks, "run_attack", lambda *a, **k: {"test_acc": 0.0, "test_asr": 0.0, "test_ra": 0.0,
                                                                 "train_seconds": 0.0})
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(argv=argvs())
def test_any_argv_ends_in_0_1_or_2_with_a_short_stderr_and_no_traceback(places, argv):
    argv = ["-q", *[places.get(t, t) for t in argv]]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:   # argparse: --help (0) or a bad flag (2)
            code = exc.code
    text = err.getvalue()
    event(f"{argv[1]} exit {code}")
    assert code in (0, 1, 2), (argv, code, text)
    assert "Traceback" not in text, (argv, text)
    assert len([ln for ln in text.splitlines() if ln.strip()]) <= MAX_STDERR_LINES, (argv, text)
