"""A burn_plugin defense as a BackdoorBench script (installed by ``burn register --bb-root PATH`` as
``defense/<name>.py``, one copy per defense of the plugin's registry: ``burn.py``, ``ulrl.py``, ...).

Run it from the BackdoorBench root, beside the other defenses::

    python defense/burn.py --attack_folder badnet_0_1 --dataset cifar10 \\
        --yaml_path config/defense/burn/cifar10.yaml --device cuda:0

The defense is the one this file is named after. ``--result_file`` is the same as ``--attack_folder``.
Results go to ``record/<attack>/defense/<name>/``; ``python defense/<name>.py --help`` lists every
setting. The implementation lives in the installed ``burn_plugin`` package
(:mod:`burn_plugin.backdoorbench.defense`); this file only imports that.

Python puts this script's folder (BackdoorBench's ``defense/``) first on ``sys.path``; it is taken off
again before anything is imported, so the many ``defense/*.py`` files there cannot shadow real
modules. As the upstream scripts do, the working directory (the checkout root) is appended at the
end, where it only serves ``defense.base`` and cannot shadow installed packages.
"""
import os
import sys


def _run() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    method = os.path.splitext(os.path.basename(__file__))[0]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    cwd = os.getcwd()
    if cwd != here and cwd not in sys.path:
        sys.path.append(cwd)
    try:
        from burn_plugin.backdoorbench.defense import main
    except ImportError as exc:
        print(f"error: cannot import burn_plugin ({exc}); install it into this Python ({sys.executable}) with "
              f"pip install burn-plugin", file=sys.stderr)
        return 2
    return main(method=method)


if __name__ == "__main__":
    sys.exit(_run())
