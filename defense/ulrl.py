"""ULRL backdoor defense as a BackdoorBench script (installed by ``burn register --bb-root PATH``).

ULRL (UnLearn and ReLearn, Min, Pham & Sun, arXiv 2405.14781) as its authors' code runs it, re-implemented
in the installed ``burn_plugin`` package (:mod:`burn_plugin.core.ulrl`); this file only imports that.
Run it from the BackdoorBench root, beside the other defenses::

    python defense/ulrl.py --attack_folder badnet_0_1 --dataset cifar10 \\
        --yaml_path config/defense/ulrl/cifar10.yaml --device cuda:0

``--result_file`` is the same as ``--attack_folder``. Results go to ``record/<attack>/defense/ulrl/``.
``python defense/ulrl.py --help`` lists every setting.

Python puts this script's folder (BackdoorBench's ``defense/``) first on ``sys.path``; it is taken off
again before anything is imported, so the many ``defense/*.py`` files there cannot shadow real
modules. As the upstream scripts do, the working directory (the checkout root) is appended at the
end, where it only serves ``defense.base`` and cannot shadow installed packages.
"""
import os
import sys


def _run() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    cwd = os.getcwd()
    if cwd != here and cwd not in sys.path:
        sys.path.append(cwd)
    try:
        from burn_plugin.backdoorbench.defense import ulrl_main
    except ImportError as exc:
        print(f"error: cannot import burn_plugin ({exc}); install it into this Python ({sys.executable}) with "
              f"pip install burn-plugin", file=sys.stderr)
        return 2
    return ulrl_main()


if __name__ == "__main__":
    sys.exit(_run())
