"""Does MFM-DA's alignment step act in the kit's budget? ``L_align`` and Dice against step (1)'s learning rate.

    python benchmarks/stage2_align_lr.py --profile cpu      # ~15-30 min on 2 cores (checkpoints are reused)

Why this exists. The authors train each stage-2 model from scratch for 100 epochs of batch 8
(``run_training_vit_FM.py``): thousands of SGD steps at lr 1e-3 with momentum 0.99, so their token
optimiser runs near its steady-state step ``lr / (1 - momentum) = 0.1`` for most of training. The kit's
``cpu`` profile has ``stage2_epochs`` x (``stage2_pairs`` / ``stage2_batch_size``) = 16 steps after the
warm-up, in which momentum has barely built up. At the authors' lr the tokens (whose output is scaled by
``s`` = 1e-3) then move so little that ``L_align`` stays where it started and ``mfmda`` equals
``translation_only``. This benchmark sweeps step (1)'s ``align_lr`` (``Stage2Config.align_lr``; steps
(2)-(3) keep the authors' lr) and prints, for each value, ``L_align`` on the first batch of the first and
of the last epoch (before that batch's step (1)) and the test Dice, beside ``translation_only``:

- the sweep, on ``--sweep-target`` with every seed of the profile;
- the value ``--compare-lr`` on every target of the profile, every seed.

With ``--both`` the value scales both optimisers (the whole budget, the authors' balance of the two rates
kept), compared with ``translation_only`` at the same rate (``results/stage2_align_lr_both_<profile>``).

``L_align`` needs no label, so the value at which the alignment acts can be read from it without the
test masks. Writes ``results/stage2_align_lr_<profile>.{md,json}`` and a figure.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--sweep", default="0.01,0.1,1", help="align_lr values of the sweep (comma-separated)")
    parser.add_argument("--sweep-target", default="riga_binrushed")
    parser.add_argument("--compare-lr", type=float, default=1.0, help="align_lr run on every target")
    parser.add_argument("--both", action="store_true",
                        help="scale both optimisers' lr (steps (1) and (2)-(3)), and compare with translation_only at "
                             "the same lr; writes stage2_align_lr_both_<profile>")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    from matplotlib import pyplot as plt

    from mfmda_lib.align import experiment as stage2
    from mfmda_lib.align.inputs import source_samples, test_samples, translations
    from mfmda_lib.align.methods import METHODS, Method, stage2_config, stage2_seeds
    from mfmda_lib.evaluation import stats
    from mfmda_lib.experiments import save_result
    from mfmda_lib.profiles import get_profile

    profile = get_profile(args.profile)
    sweep = [float(v) for v in args.sweep.split(",") if v]
    base_lr = stage2_config(profile).lr

    def method(lr: float, base: str = "mfmda") -> str:
        if lr == base_lr:
            return base
        name = f"{base}_{'lr' if args.both else 'align_lr'}_{lr:g}"
        changes = (("lr", lr), ("align_lr", lr)) if args.both else (("align_lr", lr),)
        if base == "mfmda":
            METHODS.setdefault(name, Method(name, f"MFM-DA, {'every step' if args.both else 'step (1)'} at lr {lr:g}",
                                            "stage1", ("align", "source", "translated"), changes))
        else:
            METHODS.setdefault(name, Method(name, f"translation only at lr {lr:g}", "stage1",
                                            ("source", "translated"), changes[:1]))
        return name

    source = source_samples(profile)
    targets = list(profile.stage2_targets)
    translated, origin = translations(profile, targets, source=source)
    seeds = stage2_seeds(profile)
    start = time.perf_counter()
    runs = {} if args.both else {args.sweep_target: sorted({base_lr, *sweep, args.compare_lr})}
    for t in targets:
        runs.setdefault(t, sorted({base_lr, args.compare_lr}))
    rows, curves, all_rows = [], {}, []
    for target, lrs in runs.items():
        names = ["translation_only", *[method(lr) for lr in lrs]]
        if args.both:
            names.append(method(args.compare_lr, "translation_only"))
        test = {target: test_samples(profile, [target])[target]}
        histories, scored = {}, []
        for seed in seeds:  # one call per seed: run_stage2 trains non-headline methods with its first seed only
            result = stage2.run_stage2(profile, source, {target: translated[target]}, methods=names, seeds=[seed],
                                       translation_origin=origin, test=test, progress=False)
            histories.update(result.histories)
            scored += result.rows
        scores = pd.DataFrame(scored)
        references = [("translation_only", None)] + ([(names[-1], None)] if args.both else [])
        for name, lr in [*references, *zip(names[1:], lrs)]:
            s = scores[scores["method"] == name]
            row = {"target": target, "align_lr": f"- ({name})" if lr is None else f"{lr:g}",
                   "disc_dice": s["disc_dice"].mean(), "cup_dice": s["cup_dice"].mean(), "n": len(s)}
            if lr is not None:
                first, last = [], []
                for seed in seeds:
                    epochs = histories[(name, target, seed)].epochs
                    first.append(epochs[0]["loss_align_before"])
                    last.append(epochs[-1]["loss_align_before"])
                    curves.setdefault((target, lr), []).append([e["loss_align_before"] for e in epochs]
                                                               + [epochs[-1]["loss_align_after"]])
                row.update(l_align_first=float(np.mean(first)), l_align_last=float(np.mean(last)),
                           l_align_ratio=float(np.mean(last) / np.mean(first)))
            rows.append(row)
        all_rows += scored
    compared = ["all targets: " + stats.compare(all_rows, metric, m, b).sentence()
                for m, b in ((method(args.compare_lr), "mfmda"), (method(args.compare_lr), "translation_only"),
                             *([(method(args.compare_lr), method(args.compare_lr, "translation_only"))]
                               if args.both else []))
                for metric in ("disc_dice", "cup_dice")]
    table = pd.DataFrame(rows).set_index(["target", "align_lr"])
    print(table.round(4).to_string())
    seconds = time.perf_counter() - start
    print("\n".join(compared))
    print(f"{seconds:.0f} s")
    if not args.no_save:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for lr in runs[args.sweep_target]:
            c = np.mean(curves[(args.sweep_target, lr)], axis=0)
            ax.plot(range(len(c)), c, marker="o", label=f"{'lr' if args.both else 'align_lr'} {lr:g}" + (" (authors)" if lr == base_lr else ""))
        ax.set_xlabel("epoch (first batch, before step 1; last point: after the last step)")
        ax.set_ylabel("L_align")
        ax.set_yscale("log")
        ax.set_title(f"{args.sweep_target}: does step (1) move the tokens?")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_result("stage2_align_lr_both" if args.both else "stage2_align_lr", profile, table.round(4), rows=rows, figure=fig,
                    meta={"seeds": seeds, "phase2_steps": profile.stage2_epochs * -(-profile.stage2_pairs
                                                                                       // profile.stage2_batch_size),
                          "seconds_this_run (trained models are reused)": round(seconds), "paired_differences": compared})
    return 0


if __name__ == "__main__":
    sys.exit(main())
