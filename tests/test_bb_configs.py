"""``bb_configs/<method>/<dataset>.yaml`` are generated from the config classes and a small per-dataset table
(``python -m burn_plugin.docgen``): a file that disagrees with its class fails here."""
from __future__ import annotations

import dataclasses

import yaml

from burn_plugin import docgen
from burn_plugin.defenses import all_defenses
from burn_plugin.settings import merge_settings


def test_committed_yamls_equal_their_rendering():
    stale = docgen.stale_yamls(docgen.default_configs_dir())
    assert not stale, f"{', '.join(map(str, stale))} differ from the config classes; run `python -m burn_plugin.docgen`"


def test_every_field_is_in_every_yaml_with_its_default(monkeypatch):
    for spec in all_defenses():
        if spec.yaml_dir:
            continue
        for path in sorted((docgen.default_configs_dir() / spec.name).glob("*.yaml")):
            values = yaml.safe_load(path.read_text())
            dataset = None if path.stem == "config" else path.stem
            over = {**docgen.YAML_TABLE["*"].get(dataset or "", {}), **docgen.YAML_TABLE.get(spec.name, {}).get(dataset or "", {})}
            for f in dataclasses.fields(spec.config_class):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                want = over.get(f.name, None if default == "" else (list(default) if isinstance(default, tuple) else default))
                assert values[f.name] == want, (path, f.name)
            # the file reads back as the class's defaults (plus the table's entries) through the one settings path
            config = merge_settings(spec.config_class, path, {})[0]
            assert config == dataclasses.replace(spec.config_class(), **{k: v for k, v in over.items()
                                                                       if k in spec.config_class.keys()})


def test_a_changed_default_makes_its_files_stale(monkeypatch):
    monkeypatch.setitem(docgen.YAML_TABLE, "burn", {"gtsrb": {"rounds": 3}})
    stale = docgen.stale_yamls(docgen.default_configs_dir())
    assert [p.name for p in stale] == ["gtsrb.yaml", "tiny.yaml"]   # gtsrb changed; tiny lost its batch entry
