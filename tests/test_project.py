"""Project conventions: dependency lists agree, notebooks are clean and thin, profiles are complete."""
import json
import re
import tomllib
import unicodedata
from pathlib import Path

import pytest
import yaml

from mfmda_lib.profiles import PROFILES, Profile, get_profile

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(s): s.replace(" ", "") for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(s): s.replace(" ", "") for s in pip_list}
    assert have == wanted


def test_torch_and_numpy_are_ranges_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        if _name(spec) in ("torch", "numpy", "torchvision"):
            assert "==" not in spec, f"{spec}: never pin torch/numpy exactly (breaks Colab)"


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:2] == ["00", "01"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_and_thin(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    source = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert not re.search(r"""["']cuda(:\d)?["']""", source), "pick the device through mfmda_lib"
    assert "colab-badge" in source and "Learning objectives" in source and "Expected runtime" in source
    install = "".join(code[0]["source"])
    assert "pip" in install and not re.search(r'"torch(vision)?"', install), "the install cell never installs torch"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_holds_no_control_character(path):
    """A LaTeX command typed into a Python string loses its backslash: "\\varepsilon" -> vertical tab + "arepsilon"."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        bad = sorted({repr(ch) for ch in text if unicodedata.category(ch) == "Cc" and ch != "\n"})
        assert not bad, f"{path.name}, Markdown cell {i}: control character(s) {bad} (an escaped LaTeX backslash?)"


def test_profiles_are_validated_and_selected(monkeypatch):
    assert set(PROFILES) == {"ci", "cpu", "gpu"}
    monkeypatch.setenv("MFMDA_PROFILE", "ci")
    assert get_profile().name == "ci"
    monkeypatch.setenv("MFMDA_PROFILE", "huge")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile()
    with pytest.raises(ValueError, match="eval_per_domain"):
        PROFILES["ci"].replace(test_per_domain=2, eval_per_domain=5)
    # ci really is the small one: every count is at most the cpu profile's
    for field in ("train_per_domain", "test_per_domain", "eval_per_domain", "probe_per_domain"):
        assert getattr(PROFILES["ci"], field) <= getattr(PROFILES["cpu"], field) <= getattr(PROFILES["gpu"], field)
