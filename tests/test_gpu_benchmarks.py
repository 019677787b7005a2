"""The GPU scripts: the projection benchmark's arithmetic and inventory, and the notebook runner's dry run."""
import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

from mfmda_lib.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmark_{name}"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


project_gpu = _script("project_gpu")
run_notebooks_gpu = _script("run_notebooks_gpu")


def test_the_projection_counts_flops_and_operators_of_a_real_step():
    import torch

    layer = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    m = project_gpu.measure(lambda: layer(x).sum().backward(), repeats=1)
    assert m.flops == 3 * 2 * 8 * 64 * 32  # forward matmul, and two in the backward (input and weight gradients)
    assert m.ops >= 4 and m.seconds > 0
    t4 = next(d for d in project_gpu.DEVICES if d.name == "T4")
    assert t4.seconds(16e12, 1000) == pytest.approx(16e12 / (t4.sustained_tflops * 1e12) + 1000 * t4.launch_us * 1e-6)


def test_every_notebook_has_steps_and_counts_follow_the_profile():
    small, large = project_gpu.inventory(PROFILES["ci"]), project_gpu.inventory(PROFILES["gpu"])
    assert {s.notebook for s in small} == set(project_gpu.NOTEBOOKS)
    assert [s.notebook for s in small] == [s.notebook for s in large]  # the same steps, other sizes
    assert all(s.kind in ("gpu", "cpu") and s.count >= 0 and s.formula for s in small)
    by_name = {(s.notebook, s.name): s.count for s in large}
    assert by_name[("02", "MAE step")] == PROFILES["gpu"].ssl_mae_steps
    assert by_name[("07", "DDPM train step")] == PROFILES["gpu"].ddpm_demo_steps
    assert by_name[("08", "source DDPM train step (no shipped checkpoint)")] == 0  # every profile uses the shipped DDPM


def test_the_projection_runs_a_notebook_end_to_end(capsys):
    steps = [s for s in project_gpu.inventory(PROFILES["ci"]) if s.notebook == "06"]
    rows = project_gpu.project(steps, repeats=0, max_batch=2, progress=False)
    table = project_gpu.notebook_table(rows)
    assert [t["notebook"] for t in table] == ["06_test_time_adaptation"]
    train, adapt = (next(r for r in rows if r["step"] == name)
                    for name in ("U-Net train step", "U-Net adaptation step"))
    assert (train["batch"], adapt["batch"]) == (8, PROFILES["ci"].tta_batch_size) == (8, 4)
    assert train["measured_batch"] == adapt["measured_batch"] == 2  # the same model and input, timed at batch 2
    assert train["gflops_per_step"] == pytest.approx(2 * adapt["gflops_per_step"])  # scaled by 8/2 and 4/2
    assert train["ops_per_step"] == adapt["ops_per_step"]  # the same kernels whatever the batch
    assert table[0]["T4_s"] > table[0]["A100_s"] > table[0]["H200_s"] > 0
    stamp = {"date": "today", "torch": "x", "devices": [d.__dict__ for d in project_gpu.DEVICES], "repeats": 0,
             "max_batch": 2, "torch_threads": 1}
    text = project_gpu.markdown("ci", table, rows, stamp)
    assert "T4 (projected)" in text and "TFLOP/s sustained" in text and "U-Net train step" in text


def test_the_notebook_runner_dry_run_times_each_notebook(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.environ['MFMDA_PROFILE'], os.environ['MFMDA_DEVICE'])")]
    nbformat.write(nb, folder / "00_tiny.ipynb")
    broken = nbformat.v4.new_notebook()
    broken.cells = [nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    nbformat.write(broken, folder / "01_broken.ipynb")
    code = run_notebooks_gpu.main(["--dry-run", "--notebook-dir", str(folder), "--results", str(tmp_path / "res"),
                                   "--timeout", "120"])
    saved = json.loads((tmp_path / "res" / "gpu_runtime_ci.json").read_text())
    rows = {r["notebook"]: r for r in saved["notebooks"]}
    assert code == 1 and rows["00_tiny"]["ok"] and not rows["01_broken"]["ok"] and "boom" in rows["01_broken"]["error"]
    tiny = rows["00_tiny"]
    assert tiny["seconds"] > 0 and tiny["peak_gpu_gib"] is None and tiny["device"] == "cpu"
    text = (tmp_path / "res" / "gpu_runtime_ci.md").read_text()
    assert "| 00_tiny |" in text and "n/a" in text and "FAILED" in text and saved["meta"]["dry_run"] is True


def test_the_notebook_runner_refuses_to_measure_without_a_gpu(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_notebooks_gpu.main(["--profiles", "colab"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
