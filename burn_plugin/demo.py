"""``burn demo``: attack -> BURN and FT -> side-by-side table -> plots, on the embedded Fashion-MNIST.

Settings are chosen to finish in a few minutes on a 2-core laptop CPU, and every one of them is
printed: BadNets (3x3 white corner patch, all-to-one, target 0, 10% poisoned) on an 8,000-sample
training subset with the small residual net for 35 epochs (the poisoned samples are then seen about as
often as in 5 epochs on all 60,000 images; 6,000 x 20 epochs left the backdoor unlearned, ASR 0.07); BURN with the paper's schedule and fine-tuning (20 rounds, 5 epochs each, Adam 5e-5),
evaluated once at the end; FT (5 epochs) on a 5% clean subset of the full clean training set.
The numbers are the demo's, not the paper's: the full-size run is ``burn attack`` + ``burn defend``.
"""
from __future__ import annotations

import time
from pathlib import Path

from .bench.attacks import AttackSettings, run_attack
from .bench.figures import plot_defense_folder
from .core.config import BurnConfig
from .defend import defend
from .defenses.ft import FTConfig
from .report.compare import gather_results, render_markdown, write_comparison

DEMO_ATTACK = dict(attack="badnet", dataset="fashionmnist", model="smallresnet", pratio=0.1, attack_target=0,
                   epochs=35, train_subset=8_000, test_subset=1_000, random_seed=0, eval_every_epoch=False)
DEMO_BURN = dict(eval_every_round=False)  # otherwise the paper's settings
DEMO_FT = dict(epochs=5)


def run_demo(out: Path, *, progress: bool = True, device: str = "cpu", say=print) -> dict:
    out = Path(out)
    record_root = out / "record"
    folder = record_root / "badnet_demo"
    started = time.time()
    settings = AttackSettings(device=device, **DEMO_ATTACK)
    say(f"[1/4] BadNets on Fashion-MNIST ({settings.train_subset} training images, {settings.model}, "
        f"{settings.epochs} epochs) -> {folder}")
    final = run_attack(settings, folder, overwrite=True, progress=progress)
    say(f"      attacked model: ACC {final['test_acc']:.4f}  ASR {final['test_asr']:.4f}")
    say("[2/4] BURN with the paper's settings (20 rounds x 5 epochs, k_p 0.5->1%, k_c 2.5->5%, w 0.3->0.6)")
    burn = defend(folder, method="burn", config=BurnConfig(**DEMO_BURN), device=device, overwrite=True,
                  progress=progress)
    ft_cfg = FTConfig(**DEMO_FT)
    say(f"[3/4] FT baseline ({ft_cfg.ratio:.0%} clean subset, {ft_cfg.epochs} epochs, SGD lr {ft_cfg.lr})")
    ft = defend(folder, method="ft", config=ft_cfg, device=device, overwrite=True, progress=progress)
    say("[4/4] comparison table and plots")
    df = gather_results(record_root, device=device)
    written = write_comparison(df, out / "comparison", root=record_root)
    plots = plot_defense_folder(folder / "defense" / "burn", out_dir=out / "comparison", prefix="burn_")
    say("")
    say(render_markdown(df, title="Fashion-MNIST BadNets (demo settings)"))
    say(f"BURN detection: AUROC of l(x) {burn['detection']['auroc_distance_poison']:.4f}; "
        f"wall time BURN {burn['wall_seconds']:.0f}s, FT {ft['wall_seconds']:.0f}s; total {time.time() - started:.0f}s")
    files = [*written.get("tables", []), *written.get("plots", []), *[p for pl in plots.values() for p in pl.paths]]
    say(f"results: {out.resolve()} (tables and plots in {(out / 'comparison').resolve()}, {len(files)} files)")
    return {"burn": burn, "ft": ft, "table": df, "files": files}
