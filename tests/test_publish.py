"""The kit's URL: one place (pyproject), copied into every badge and install cell; the install cell fails clearly."""
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from course import publish

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def test_every_badge_install_cell_and_the_readme_agree_with_pyproject():
    url = publish.kit_url(ROOT)
    assert publish.check(ROOT) == []
    for path in NOTEBOOKS:
        first, install = _cells(path)[:2]
        assert publish.badge_line(url, path.name) in first.splitlines()
        assert install == publish.install_cell(url) and f'KIT_URL = "{url}"' in install
    if not publish.is_published(url):  # until there is a real URL the README says so plainly
        assert "The kit has no public URL yet" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def kit_copy(tmp_path):
    root = tmp_path / "kit"
    (root / "notebooks").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, root / name)
    for path in NOTEBOOKS:
        shutil.copy(path, root / "notebooks" / path.name)
    return root


def test_publish_rewrites_every_badge_install_cell_and_the_readme(kit_copy):
    before = {p.name: _cells(p) for p in (kit_copy / "notebooks").glob("*.ipynb")}
    url = "https://example.org/kit.git"
    changed = publish.publish(url, kit_copy)
    assert len(changed) == len(NOTEBOOKS) + 2  # pyproject, README and every notebook
    assert publish.kit_url(kit_copy) == url and publish.check(kit_copy) == []
    for path in sorted((kit_copy / "notebooks").glob("*.ipynb")):
        cells, old = _cells(path), before[path.name]
        assert f'KIT_URL = "{url}"' in cells[1] and "example.invalid" not in cells[0] + cells[1]
        assert f"fetches the kit from {url}" in cells[0]
        assert [line for line in cells[0].splitlines() if "colab-badge" not in line] == \
               [line for line in old[0].splitlines() if "colab-badge" not in line]  # only the badge line changed
        assert cells[2:] == old[2:]  # every other cell untouched
        json.loads(path.read_text(encoding="utf-8"))  # still a valid notebook
    assert f"The kit is published at `{url}`" in (kit_copy / "README.md").read_text(encoding="utf-8")
    assert publish.publish(url, kit_copy) == []  # idempotent
    publish.publish("https://github.com/someone/mfmda-kit.git", kit_copy, branch="dev")
    badge = _cells(kit_copy / "notebooks" / NOTEBOOKS[0].name)[0]
    assert f"https://colab.research.google.com/github/someone/mfmda-kit/blob/dev/notebooks/{NOTEBOOKS[0].name}" in badge
    assert publish.check(kit_copy, branch="dev") == [] and publish.check(kit_copy) != []
    with pytest.raises(ValueError, match="git URL"):
        publish.publish("not a url", kit_copy)


def test_check_names_a_notebook_that_disagrees(kit_copy):
    path = kit_copy / "notebooks" / NOTEBOOKS[3].name
    path.write_text(path.read_text(encoding="utf-8").replace("example.invalid", "elsewhere.invalid"), encoding="utf-8")
    problems = publish.check(kit_copy)
    assert problems and all(p.startswith(NOTEBOOKS[3].name) for p in problems)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python with nothing installed (no kit, no pip): what the install cell sees on a fresh machine."""
    env_dir = tmp_path_factory.mktemp("bare") / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    return env_dir / "bin" / "python"


def _run_install_cell(python: Path, url: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([str(python), "-c", publish.install_cell(url)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("url", ["file:///nonexistent/mfmda-kit.git", "http://127.0.0.1:9/mfmda-kit.git"])
def test_the_install_cell_says_what_to_do_when_the_kit_cannot_be_fetched(bare_python, tmp_path, url):
    done = _run_install_cell(bare_python, url, tmp_path)  # no network: a missing path, a closed local port
    out = done.stdout + done.stderr
    assert done.returncode == 1
    assert f"Could not fetch the kit from {url}" in done.stderr
    ways_on = ("set KIT_URL", "upload the kit's folder here as ./mfmda-kit", "make wheel", "%pip install mfmda_kit")
    for way in ways_on:
        assert way in done.stderr, way
    assert "CalledProcessError" not in out and "Traceback" not in out
    assert not (tmp_path / "mfmda-kit").exists()


def test_the_install_cell_clones_a_reachable_kit_then_reports_what_it_cannot_install(bare_python, tmp_path):
    origin = tmp_path / "origin"
    (origin / "mfmda_lib").mkdir(parents=True)
    (origin / "mfmda_lib" / "__init__.py").write_text("")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(origin)]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "kit"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    work = tmp_path / "colab"
    work.mkdir()
    done = _run_install_cell(bare_python, origin.as_uri(), work)
    assert (work / "mfmda-kit" / "mfmda_lib" / "__init__.py").is_file()  # fetched
    assert done.returncode == 1 and "Could not pip-install" in done.stderr  # this bare Python has no pip
    assert "CalledProcessError" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_the_command_line_checks_the_repository(capsys):
    assert publish.main(["--check"]) == 0
    assert publish.kit_url(ROOT) in capsys.readouterr().out
    assert sys.modules["course.publish"] is publish
