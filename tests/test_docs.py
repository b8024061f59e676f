"""The documentation site: it builds with ``mkdocs build --strict`` without the network, its generated
reference pages (commands, configuration) equal a fresh render of the code, and every flag and every
setting has a help text to render."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from burn_plugin import docgen

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")   # mkdocs-material's banner about its successor
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    for page in ("index.html", "commands/index.html", "configuration/index.html", "api/index.html",
                 "results/index.html"):
        assert (site / page).is_file(), page
    # nothing is fetched when the site is read either: no web fonts, scripts or styles from elsewhere
    remote = re.compile(r'<(?:link|script)[^>]+(?:href|src)="(?:https?:)?//[^"]*"')
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert not remote.search(text), f"{html.relative_to(site)}: {remote.search(text).group(0)}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "run_burn" in api and "BurnConfig" in api     # mkdocstrings rendered core/
    assert ":func:<code>" not in api and ":class:<code>" not in api   # docs/hooks.py dropped the roles


def test_generated_pages_equal_a_fresh_render():
    stale = docgen.stale_pages(DOCS)
    assert not stale, (f"{', '.join(p.name for p in stale)} differ from the code; run `python -m "
                       f"burn_plugin.docgen` and commit the pages")


def test_every_flag_and_every_setting_has_a_help_text():
    assert docgen.missing_help() == []
    assert docgen.unknown_metadata() == []


def test_a_missing_help_text_is_named(monkeypatch):
    from burn_plugin.core.config import BurnConfig
    from burn_plugin.flags import SUBCOMMANDS

    def toy(args):
        return 0

    def configure(p):
        p.add_argument("--silent")                   # no help at all
        p.add_argument("--terse", help="default 3")  # says nothing but its default
        p.add_argument("--hidden", help=argparse.SUPPRESS)   # hidden on purpose: not reported
    toy.configure = configure
    monkeypatch.setitem(SUBCOMMANDS, "toy", ("a toy command", toy))
    monkeypatch.setattr(BurnConfig, "_HELP", {k: v for k, v in BurnConfig._HELP.items() if k != "rounds"})
    monkeypatch.setattr(BurnConfig, "_PAPER", {**BurnConfig._PAPER, "round": "20"})
    assert docgen.missing_help() == ["burn defend --rounds", "burn toy --silent", "burn toy --terse",
                                     "BurnConfig.rounds"]
    assert docgen.unknown_metadata() == ["BurnConfig._PAPER['round']"]


def test_the_configuration_page_has_one_row_per_setting_and_the_papers_values():
    from burn_plugin.core.config import BurnConfig

    page = docgen.render_configuration()
    for spec in docgen.config_classes():
        for f in dataclasses.fields(spec.config_class):
            assert f"| `{f.name}` |" in page, (spec.name, f.name)
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    assert "| `20` | 20 (T, §5.2) |" in rows["rounds"]
    assert f"| `{BurnConfig.pd_output}` | — |" in rows["pd_output"]    # the paper is silent


def test_every_page_in_docs_is_in_the_nav():
    cfg = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            if isinstance(item, str):
                yield item
            else:
                for v in item.values():
                    yield from (pages(v) if isinstance(v, list) else [v])
    listed = set(pages(cfg["nav"]))
    on_disk = {p.name for p in DOCS.glob("*.md")} | {"results/index.md"}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert all((DOCS / p).is_file() for p in listed), sorted(p for p in listed if not (DOCS / p).is_file())


def test_the_hook_keeps_the_code_and_drops_the_role():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    html = ("see :func:<code>run_burn</code> and :class:<code>~burn_plugin.core.config.BurnConfig</code>, "
            "not a:b:<code>x</code>")
    assert hooks.on_page_content(html) == ("see <code>run_burn</code> and <code>BurnConfig</code>, "
                                           "not a:b:<code>x</code>")
