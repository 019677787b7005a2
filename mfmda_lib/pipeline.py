"""The MFM-DA pipeline end to end, stage by stage: what ``mfmda run`` (the kit's main job) does.

Stages, each checkpointed and recorded in ``<run_dir>/state.json`` when it finishes, so that a
run killed at any point restarts where it stopped (a finished stage is skipped; a stage killed
half-way resumes from its own checkpoint):

1. ``source_ddpm``: the source-domain DDPM (the shipped checkpoint when present, checksum
   verified; else trained) - :func:`mfmda_lib.diffusion.source.load_source_ddpm`.
2. ``stage1/<target>``: the DDPM adapted to each target from K unlabeled images, and every
   labelled source image translated to that target - :mod:`mfmda_lib.diffusion.stage1`.
3. ``stage2``: the frozen foundation model with Rein tokens, feature pyramid and head, trained with
   the channel-spatial alignment loss on source + translated images, and the baselines -
   :func:`mfmda_lib.align.experiment.run_stage2`.
4. ``report``: metrics as JSON, a Markdown table and figures in ``<run_dir>/``, and the table in
   ``results/mfmda_pipeline_<profile>.{md,json}``.

With a ``target_folder`` of your own unlabeled images, stage 1 adapts to them and stage 2 trains
MFM-DA for them; there are no labels to score, so the run writes the translations and the
predicted disc/cup masks of your images instead of a Dice table. Whole-fundus photographs are
detected and cropped around the optic disc first (the kit's ROI convention, :mod:`mfmda_lib.roi`),
and the masks are mapped back onto each photograph (:func:`~mfmda_lib.pipeline_io.write_predictions`).

Sizes (K, steps, epochs, resolutions) come from the profile; the config file picks what to run.
Training runs under HF Accelerate (one process by default; ``accelerate launch -m mfmda_lib.cli run``
on several GPUs).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .environment import get_device, paths
from .io import NPZ, atomic_write, atomic_write_json, save_artefact, save_png
from .pipeline_io import PipelineConfig, RunState, TargetFolder, read_target_folder, write_predictions
from .profiles import Profile, get_profile

__all__ = ["PipelineResult", "run_pipeline", "run_dir_for"]


@dataclass
class PipelineResult:
    """What a run produced.

    Attributes:
        profile: the profile's name.
        run_dir: the run's folder.
        seconds: wall time of each stage as it ran (``0`` for a stage skipped because it had finished).
        table: the stage-2 comparison (method x target) when targets have labels, else ``None``.
        summary: one row per method, mean target disc / cup Dice, when there are labels.
        files: what the report wrote.
    """

    profile: str
    run_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    files: dict[str, Path] = field(default_factory=dict)


def run_dir_for(config: PipelineConfig, profile: Profile) -> Path:
    """``config.run_dir``, else ``<results>/mfmda_run_<profile>`` (``..._<folder>`` for a user's folder)."""
    if config.run_dir:
        return Path(config.run_dir).expanduser()
    suffix = f"_{_folder_name(config.target_folder)}" if config.target_folder else ""
    return paths().results / f"mfmda_run_{profile.name}{suffix}"


def _folder_name(folder: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(folder).expanduser().resolve().name) or "target"


def _stage(state: RunState, name: str, seconds: dict[str, float], log: Callable[[str], None], body: Callable[[], dict | None]):
    """Run ``body`` unless ``name`` finished in an earlier run; record its time and summary."""
    if state.done(name):
        log(f"[{name}] done in an earlier run ({state.stages[name].get('seconds', '?')} s): skipped")
        seconds[name] = 0.0
        return
    log(f"[{name}] running")
    start = time.perf_counter()
    summary = body() or {}
    seconds[name] = round(time.perf_counter() - start, 1)
    state.mark(name, {"seconds": seconds[name], **summary})
    log(f"[{name}] finished in {seconds[name]:.0f} s")


def run_pipeline(config: PipelineConfig, *, progress: bool = True, fresh: bool = False,
                 log: Callable[[str], None] = print) -> PipelineResult:
    """Run (or resume) the whole MFM-DA pipeline described by ``config``.

    Args:
        config: what to run (:class:`~mfmda_lib.pipeline_io.PipelineConfig`).
        progress: tqdm bars inside the stages.
        fresh: forget the finished stages of an earlier run in the same folder (checkpoints and
            cached translations are still reused when their settings match).
        log: where stage messages go.
    """
    from .align.methods import PIPELINE_METHODS
    from .diffusion.source import load_source_ddpm
    from .diffusion.training import make_accelerator

    profile = get_profile(config.profile or None)
    k = profile.stage1_k_target
    target = None
    if config.target_folder:  # validate before any expensive work (or any folder is created)
        target = read_target_folder(config.target_folder, k, profile.image_size, crop=config.crop,
                                    threshold=config.disc_confidence)
        files = [item.path for item in target.items]
        log(f"target folder {config.target_folder}: {len(files)} images ({files[0].name} ... {files[-1].name}) read as "
            + ("whole-fundus photographs, each cropped around its optic disc" if target.whole else "disc-centred ROIs")
            + f"; disc found in {len(target.crops)}"
            + (f" (no mask for: {', '.join(i.path.name for i in target.skipped)})" if target.skipped else "")
            + f"; stage 1 adapts from the first K = {k}, stage 2 segments all of them")
    run_dir = run_dir_for(config, profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh and (run_dir / "state.json").exists():
        (run_dir / "state.json").unlink()
    state = RunState(run_dir)
    result = PipelineResult(profile.name, run_dir)
    methods = list(config.methods or PIPELINE_METHODS)
    log(f"mfmda run | profile {profile.name} | device {get_device()} | run folder {run_dir}")
    accelerator = make_accelerator(get_device())

    _stage(state, "source_ddpm", result.seconds, log,
           lambda: {"checkpoint": str(load_source_ddpm(profile, accelerator=accelerator, progress=progress)[2])})

    if target is not None:
        _run_user_folder(profile, config, target, state, result, accelerator, progress, log)
        return result

    return _run_benchmark(profile, config, methods, state, result, accelerator, progress, log)


def _run_benchmark(profile: Profile, config: PipelineConfig, methods: list[str], state: RunState,
                   result: PipelineResult, accelerator, progress: bool, log: Callable[[str], None]) -> PipelineResult:
    """Stage 1 per benchmark target, stage 2 on the source and the translations, then the report; resumable."""
    from .align.experiment import run_stage2
    from .align.inputs import source_samples
    from .diffusion.stage1 import translated_source

    run_dir = result.run_dir
    translated: dict[str, list] = {}
    for target in config.targets:
        def stage1(target=target) -> dict:
            translated[target] = translated_source(profile, target, progress=progress, accelerator=accelerator)
            return {"images": len(translated[target])}
        _stage(state, f"stage1/{target}", result.seconds, log, stage1)
        if target not in translated:  # finished earlier: the translations are cached on disk
            translated[target] = translated_source(profile, target, progress=progress, accelerator=accelerator)

    source = source_samples(profile)  # the first stage2_pairs labelled source images, paired by position
    translated = {t: v[:len(source)] for t, v in translated.items()}
    stage2_out: dict = {}

    def stage2() -> dict:
        res = run_stage2(profile, source, translated, methods=methods, accelerator=accelerator, progress=progress)
        stage2_out["result"] = res
        atomic_write_json(run_dir / "stage2_rows.json", {"rows": res.rows, "costs": res.costs,
                                                          "targets": res.targets, "seconds": res.seconds})
        return {"models_trained": len(res.costs)}

    _stage(state, "stage2", result.seconds, log, stage2)
    if "result" not in stage2_out:  # finished earlier: weights are checkpointed, scoring is cheap
        stage2_out["result"] = run_stage2(profile, source, translated, methods=methods, accelerator=accelerator,
                                          progress=progress)
    res = stage2_out["result"]
    result.table, result.summary = res.table(), res.summary()

    def report() -> dict:
        result.files = _write_report(profile, run_dir, res, result.seconds, state)
        return {"files": {k: str(v) for k, v in result.files.items()}}

    _stage(state, "report", result.seconds, log, report)
    if not result.files:
        result.files = {k: Path(v) for k, v in state.stages["report"].get("files", {}).items()}
    return result


def _stage_times(state: RunState) -> dict[str, float]:
    return {name: info.get("seconds", 0.0) for name, info in state.stages.items()}


def _write_report(profile: Profile, run_dir: Path, res, seconds: dict[str, float], state: RunState) -> dict[str, Path]:
    """Metrics JSON, Markdown table and figures of a labelled run; the table also goes to ``results/``."""
    from .evaluation.tables import format_table
    from .experiments import save_result
    from .plots import save_figure

    table, summary = res.table(), res.summary()
    times = _stage_times(state)
    files = {"json": run_dir / "metrics.json", "md": run_dir / "results.md"}
    atomic_write_json(files["json"], {"profile": profile.name, "stage_seconds": times, "seeds": res.seeds,
                                      "table": table.reset_index().to_dict(orient="records"),
                                      "summary": summary.reset_index().to_dict(orient="records"),
                                      "headline": res.headline().reset_index().to_dict(orient="records"),
                                      "costs": res.costs})
    from .align.report import alignment_log, headline_markdown, verdict_lines
    from .evaluation.tables import _markdown

    headline = res.headline()
    lines = [f"# MFM-DA pipeline ({profile.name} profile)", "",
             "Stage times (s, as first run): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), "",
             f"## Mean target Dice per method (95% intervals over {len(res.seeds)} seed(s) and the test images)", "",
             headline_markdown(headline), "",
             "## Verdict (computed)", "", *[f"- {line}" for line in verdict_lines(res)], "",
             "## Per target domain (mean ± std over seeds and images)", "", format_table(table), ""]
    src = res.source_table()
    if len(src) and "source_only" in summary.index:
        own = src.xs("source_only", level="method")[["disc_dice", "cup_dice"]].mean(axis=1).mean()
        lines += [f"Source-only: mean Dice {own:.3f} on the source hospital's test images, "
                  f"{summary.loc['source_only', 'dice']:.3f} on the targets ({summary.loc['source_only', 'dice'] - own:+.3f}).", ""]
    log_table = alignment_log(res.histories)
    if len(log_table):
        last = log_table.groupby(["target", "seed"]).tail(1)
        lines += ["## Does the alignment act? (last epoch of each MFM-DA model)", "",
                  "Update of the Rein parameters by step (1) vs steps (2)-(3), and L_align before/after step (1):", "",
                  _markdown(list(last.columns), [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
                                                 for row in last.itertuples(index=False)]), ""]
    with atomic_write(files["md"], "w") as handle:
        handle.write("\n".join(lines))
    figure = _summary_figure(summary, profile)
    files["png"] = run_dir / "figures" / "mean_target_dice.png"
    save_figure(figure, files["png"])
    written = save_result("mfmda_pipeline", profile, table, rows=res.rows,
                          meta={"stage_seconds": times, "seeds": res.seeds})
    files.update({f"results_{k}": v for k, v in written.items()})
    return files


def _summary_figure(summary: pd.DataFrame, profile: Profile):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(summary) + 1.2))
    order = summary.sort_values("dice")
    colors = ["tab:red" if m == "mfmda" else "tab:gray" for m in order.index]
    ax.barh(order.index, order["dice"], color=colors)
    ax.set_xlabel("mean target Dice (disc and cup)")
    ax.set_title(f"MFM-DA pipeline, {profile.name} profile")
    fig.tight_layout()
    return fig


def _run_user_folder(profile: Profile, config: PipelineConfig, target: TargetFolder, state: RunState,
                     result: PipelineResult, accelerator, progress: bool, log: Callable[[str], None]) -> None:
    """Stage 1 and stage 2 for a folder of unlabeled images: translations and predicted masks, no scores."""
    from .align.experiment import predict_target_masks
    from .align.inputs import source_samples as stage2_source
    from .diffusion.source import load_source_ddpm
    from .diffusion.stage1 import feature_encoder, run_stage1, sources_to_translate, stage1_config, translate_config
    from .diffusion.ddpm import to_signed_tensor

    name = _folder_name(config.target_folder)
    run_dir = result.run_dir
    user_images = target.crops  # the kit's disc-centred ROIs of the images whose disc was found
    source = sources_to_translate(profile)
    cache = run_dir / "translations" / f"{name}.npz"

    def stage1() -> dict:
        model, ddpm, _ = load_source_ddpm(profile, accelerator=accelerator, progress=progress)
        images = [s.image for s in source]
        encoder = feature_encoder(profile, to_signed_tensor(images, ddpm.image_size), accelerator.device)
        out = run_stage1(images, user_images[:profile.stage1_k_target], source_model=model, ddpm=ddpm, encoder=encoder, variant="mfmda",
                         adapt_config=stage1_config(profile), translate_cfg=translate_config(profile),
                         accelerator=accelerator, checkpoint=run_dir / "stage1" / name / "adapt.pt", progress=progress)
        save_artefact(cache, {"images": np.stack(out.images)}, NPZ)
        for i, img in enumerate(out.images[:8]):
            save_png(run_dir / "translations" / name / f"{source[i].sample_id}.png", img)
        return {"images": len(out.images)}

    _stage(state, f"stage1/{name}", result.seconds, log, stage1)
    translated_images = list(NPZ.load(cache)["images"])
    from .data import FundusSample

    translated = [FundusSample(image=img, disc=s.disc, cup=s.cup, domain=s.domain, sample_id=s.sample_id,
                               glaucoma=s.glaucoma, meta={**s.meta, "translated_to": name})
                  for s, img in zip(source, translated_images)]
    pairs = len(stage2_source(profile))  # stage 2 trains on the first stage2_pairs, as for the benchmark targets
    source, translated = source[:pairs], translated[:pairs]

    def stage2() -> dict:
        masks = predict_target_masks(profile, source, translated, user_images, target_name=name,
                                     checkpoint_dir=run_dir / "stage2", accelerator=accelerator, progress=progress)
        write_predictions(run_dir / "predictions" / name, target, masks)
        return {"predicted": len(masks), "no_disc": [item.path.name for item in target.skipped]}

    _stage(state, "stage2", result.seconds, log, stage2)
    result.files = {"translations": run_dir / "translations" / name, "predictions": run_dir / "predictions" / name}
    log(f"no labels for {config.target_folder}: wrote translations to {result.files['translations']} and "
        f"predicted masks (0 background, 128 disc, 255 cup) to {result.files['predictions']}: full-size masks, "
        f"ROI masks in roi/, overlays in overlay/, where each disc was found in rois.csv")
