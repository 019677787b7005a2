"""Run every notebook in the GPU profiles and write the measured runtime table (time, peak GPU memory).

    python benchmarks/run_notebooks_gpu.py                       # colab and gpu profiles, every notebook
    python benchmarks/run_notebooks_gpu.py --profiles colab --notebooks 02 09
    python benchmarks/run_notebooks_gpu.py --dry-run              # ci profile on the CPU: checks the script itself

The one command to run when a GPU machine is lent (the ``device`` tool's ``status`` says so). Each
notebook runs top to bottom in its own kernel (``nbclient``), with ``MFMDA_PROFILE`` set, exactly as
a student runs it; a last cell, added in memory only, reports ``torch.cuda.max_memory_allocated()``.
By default every notebook gets a fresh data and cache folder, like a fresh Colab VM (notebook 04
then retrains notebook 02's MAE and notebook 09 reruns stage 1); ``--warm`` uses the kit's folders.
Results the notebooks save go to ``--results`` (default: the kit's ``results/``), so a GPU run also
leaves the ``_colab`` / ``_gpu`` tables and figures to commit.

Writes ``<results>/gpu_runtime_<profile>.{md,json}``: per notebook its wall time, peak GPU memory,
the device and whether it ran without error. ``--dry-run`` runs the ``ci`` profile on the CPU
(``MFMDA_DEVICE=cpu``), where peak GPU memory is ``n/a``: ``tests/test_run_notebooks_gpu.py``
exercises it on a tiny notebook.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MARK = "MFMDA_RUN_REPORT="
_REPORT_CELL = f"""\
import json as _json, torch as _torch
_cuda = _torch.cuda.is_available()
print("{_MARK}" + _json.dumps({{"peak_gpu_bytes": _torch.cuda.max_memory_allocated() if _cuda else None,
                                "device": _torch.cuda.get_device_name() if _cuda else "cpu"}}))"""


def run_notebook(path: Path, profile: str, *, env: dict[str, str], timeout: int, workdir: Path) -> dict:
    """Execute one notebook in a fresh kernel; return its wall time, peak GPU memory, device and error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_REPORT_CELL))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    error = None
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    report = {"peak_gpu_bytes": None, "device": None}
    outputs = [o for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream"]
    for line in "".join(o.get("text", "") for o in outputs).splitlines():
        if line.startswith(_MARK):
            report = json.loads(line[len(_MARK):])
    return {"notebook": path.stem, "profile": profile, "seconds": round(seconds, 1),
            "peak_gpu_gib": None if report["peak_gpu_bytes"] is None else round(report["peak_gpu_bytes"] / 2**30, 2),
            "device": report["device"], "ok": error is None, "error": error}


def _cell(value, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def markdown(profile: str, rows: list[dict], meta: dict) -> str:
    head = "| notebook | wall time | peak GPU memory | ran |\n|---|---:|---:|---|"
    body = "\n".join(f"| {r['notebook']} | {r['seconds'] / 60:.1f} min | {_cell(r['peak_gpu_gib'], ' GiB')} | "
                     f"{'yes' if r['ok'] else 'FAILED: ' + str(r['error'])} |" for r in rows)
    stamp = ", ".join(f"{k}: {v}" for k, v in meta.items())
    return f"# gpu_runtime ({profile} profile)\n\n_{stamp}_\n\n{head}\n{body}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["colab", "gpu"], help="profiles to run (default: colab gpu)")
    parser.add_argument("--notebooks", nargs="+", default=None, help="notebook numbers (default: all), e.g. 02 09")
    parser.add_argument("--notebook-dir", default=str(ROOT / "notebooks"), help="folder of NN_*.ipynb notebooks")
    parser.add_argument("--results", default=None, help="results folder (default: MFMDA_RESULTS or the kit's results/)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell before it counts as failed")
    parser.add_argument("--warm", action="store_true", help="share data and cache folders between notebooks")
    parser.add_argument("--dry-run", action="store_true", help="the ci profile on the CPU (no GPU needed)")
    args = parser.parse_args(argv)

    import torch

    profiles = ["ci"] if args.dry_run else args.profiles
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (use --dry-run to check the script on a CPU)", file=sys.stderr)
        return 2
    notebooks = sorted(Path(args.notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if args.notebooks:
        notebooks = [p for p in notebooks if p.name[:2] in args.notebooks]
    if not notebooks:
        parser.error(f"no notebooks to run in {args.notebook_dir} (numbers {args.notebooks})")
    results = Path(args.results or os.environ.get("MFMDA_RESULTS") or ROOT / "results").resolve()
    scratch = Path(tempfile.mkdtemp(prefix="mfmda-gpu-run-"))
    from mfmda_lib.io import atomic_write, atomic_write_json

    everything_ran = True
    for profile in profiles:
        rows = []
        for path in notebooks:
            home = scratch / f"{profile}-{path.stem}"
            env = {"MFMDA_PROFILE": profile, "MFMDA_RESULTS": str(results), "MPLBACKEND": "Agg",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            if not args.warm:  # a fresh VM: the notebook generates its data and fills its caches itself
                env |= {"MFMDA_DATA": str(home / "data"), "MFMDA_CACHE": str(home / "cache")}
            if args.dry_run:
                env["MFMDA_DEVICE"] = "cpu"
            print(f"[{profile}] {path.name} ...", flush=True)
            row = run_notebook(path, profile, env=env, timeout=args.timeout, workdir=path.parent)
            print(f"[{profile}] {path.name}: {row['seconds']:.0f} s, peak GPU {_cell(row['peak_gpu_gib'], ' GiB')}"
                  + ("" if row["ok"] else f", FAILED: {row['error']}"), flush=True)
            rows.append(row)
        devices = sorted({r["device"] for r in rows if r["device"]})
        meta = {"profile": profile, "device": ", ".join(devices) or "unknown", "date": _dt.date.today().isoformat(),
                "torch": torch.__version__, "python": platform.python_version(),
                "folders": "the kit's (shared)" if args.warm else "fresh per notebook (like a new Colab VM)",
                "dry_run": args.dry_run}
        # "notebooks", not "rows": notebook 10 re-summarises the per-image "rows" of every result it finds
        atomic_write_json(results / f"gpu_runtime_{profile}.json", {"meta": meta, "notebooks": rows})
        text = markdown(profile, rows, meta)
        with atomic_write(results / f"gpu_runtime_{profile}.md", "w") as handle:
            handle.write(text)
        print(text)
        everything_ran &= all(r["ok"] for r in rows)
    return 0 if everything_ran else 1


if __name__ == "__main__":
    sys.exit(main())
