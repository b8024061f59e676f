"""``burn register`` and ``burn doctor`` (imported by :func:`burn_plugin.cli.main` at start-up)."""
from __future__ import annotations

from ..cli import flag, subcommand


def _bb_root_flag(p) -> None:
    flag(p, "bb_root", default=None, metavar="PATH",
         help="BackdoorBench checkout (holding defense/, config/defense/, utils/ or record/); "
              "default $BACKDOORBENCH_ROOT")


@subcommand("register", "install BURN and ULRL into a BackdoorBench checkout (defense/{burn,ulrl}.py + config/defense/{burn,ulrl}/)")
def cmd_register(args) -> int:
    from .register import register, resolve_bb_root, unregister

    root = resolve_bb_root(args.bb_root)
    if args.uninstall:
        actions = unregister(root, force=args.force)
    else:
        actions = register(root, force=args.force)
    for a in actions:
        print(a.line())
    if not args.uninstall:
        print(f"registered in {root}; run from there: python defense/burn.py --attack_folder <attack> "
              f"--dataset <dataset> --yaml_path config/defense/burn/<dataset>.yaml --device cuda:0 "
              f"(ULRL: python defense/ulrl.py, config/defense/ulrl/)")
    return 0


def _configure_register(p) -> None:
    _bb_root_flag(p)
    p.add_argument("--uninstall", action="store_true",
                   help="remove exactly the files burn register installed (and folders it created, if empty)")
    p.add_argument("--force", action="store_true",
                   help="replace (or on --uninstall, remove) files that burn register did not write or that "
                        "were changed since")


cmd_register.configure = _configure_register


@subcommand("doctor", "check a BackdoorBench checkout: BURN installed, data, records, Python packages")
def cmd_doctor(args) -> int:
    from .doctor import diagnose, report
    from .register import resolve_bb_root

    lines, code = report(diagnose(resolve_bb_root(args.bb_root)))
    print("\n".join(lines))
    return code


cmd_doctor.configure = _bb_root_flag
