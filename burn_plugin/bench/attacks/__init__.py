"""Standalone poisoning attacks that write complete BackdoorBench record folders.

``BadNets`` (patch) and ``Blended``, all-to-one or all-to-all, on any dataset the plugin can load.
Poison indices are drawn as BackdoorBench draws them (interface.md 2.4): ``round(pratio * N)``
indices uniformly from all classes with ``numpy``'s ``choice(..., replace=False)`` after seeding;
test: every non-target-class sample (all-to-one) or every sample (all-to-all). The record folder
holds ``attack_result.pt``, ``info.pickle``, ``attack_df.csv``, ``attack_df_summary.csv``,
``train_poison_index_list.pickle`` and the poisoned PNGs in ``bd_train_dataset/`` and
``bd_test_dataset/``, all as a BackdoorBench attack writes them.

Triggers (no BackdoorBench resources are needed):
- BadNets: BackdoorBench's default trigger, a 3x3 white square in the bottom-right corner, applied as
  ``img * (trigger == 0) + trigger * (trigger > 0)``.
- Blended: ``(1 - alpha) * img + alpha * pattern`` truncated to uint8, alpha 0.2; the pattern is an
  image file (e.g. BackdoorBench's ``hello_kitty.jpeg``) or, by default, seeded uniform noise.
"""
from __future__ import annotations

from .base import Attack, attack_params, bd_label_fn, get_attack, list_attacks, poison_indices, register_attack
from .badnet import BadNets   # importing an attack's module registers it
from .blended import Blended
from .lc import LabelConsistent
from .lf import LowFrequency
from .sig import SIG
from .wanet import WaNet
from .run import AttackContext, AttackSettings, run_attack, staging_folder, swap_in

__all__ = ["Attack", "AttackContext", "AttackSettings", "attack_params", "BadNets", "Blended", "LabelConsistent", "LowFrequency", "SIG", "WaNet", "bd_label_fn", "get_attack", "list_attacks", "poison_indices",
           "register_attack", "run_attack", "staging_folder", "swap_in"]
