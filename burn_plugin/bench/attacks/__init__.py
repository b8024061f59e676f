"""Standalone poisoning attacks that write complete BackdoorBench record folders.

One module per attack, each registered under BackdoorBench's attack name (``list_attacks()``):

- ``badnet`` (patch), ``blended``: dirty-label, all-to-one or all-to-all;
- ``sig`` (sinusoidal signal) and ``lc`` (label-consistent: PGD-hardened images + corner trigger):
  clean-label, only target-class training samples are poisoned and keep their labels;
- ``lf`` (low-frequency universal perturbation): dirty-label, its pattern made here from a
  clean-trained model;
- ``inputaware`` (the paper's "Dynamic": a per-image trigger from a pattern generator and a mask
  generator trained beside a classifier, with cross-trigger samples that keep their labels);
- ``ssba`` (sample-specific invisible triggers: a fixed secret embedded by an encoder trained here);
- ``trojannn`` (a masked patch optimised to excite two feature neurons of a clean-trained model);
- ``wanet`` (image warp, with noise-warped samples that keep their labels).

``base.py`` holds the registry, the :class:`Attack` interface and BackdoorBench's poison-index rule
(interface.md 2.4): ``round(pratio * N)`` indices with ``numpy``'s ``choice(..., replace=False)`` after
seeding, from all classes, or from the target class for clean-label attacks (pratio stays a share of
the whole training set, as in BackdoorBench); test: every non-target-class sample (all-to-one) or every
sample (all-to-all). ``run.py`` poisons, trains and writes the record folder (``attack_result.pt``,
``info.pickle``, ``attack_df.csv``, ``attack_df_summary.csv``, ``train_poison_index_list.pickle``, the
poisoned PNGs), building it in a staging folder and swapping it in whole. Attacks that need a model
trained on clean data (``lf``, ``lc``, ``trojannn``) get it from :class:`AttackContext` (seeded, cached in
``.attack_cache`` beside the record and reused). A new attack is one module here, imported below.
"""
from __future__ import annotations

from .base import Attack, attack_params, bd_label_fn, get_attack, list_attacks, poison_indices, register_attack
from .badnet import BadNets   # importing an attack's module registers it
from .blended import Blended
from .lc import LabelConsistent
from .lf import LowFrequency
from .inputaware import InputAware
from .sig import SIG
from .ssba import SSBA
from .trojannn import TrojanNN
from .wanet import WaNet
from .run import AttackContext, AttackSettings, run_attack, staging_folder, swap_in

__all__ = ["Attack", "AttackContext", "AttackSettings", "attack_params", "BadNets", "Blended", "InputAware", "LabelConsistent", "LowFrequency", "SIG", "SSBA", "TrojanNN", "WaNet", "bd_label_fn", "get_attack", "list_attacks", "poison_indices",
           "register_attack", "run_attack", "staging_folder", "swap_in"]
