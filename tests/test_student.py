"""Student versions of the notebooks, exercise hygiene, and Colab badges / install cells."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

from mfmda_lib.teaching import student

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: Notebooks that must carry at least one exercise (others may be tagged later).
WITH_EXERCISES = ("00_", "01_", "10_")


def _code(cell) -> str:
    """A code cell's Python, IPython magics and shell lines blanked out."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())


def _names(source: str, ctx) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)} | (
        {a.asname or a.name.split(".")[0] for n in ast.walk(ast.parse(source))
         if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names} if ctx is ast.Store else set())


def _toy_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell("# Exercise: add one\n# to x.\ny = x + 1\nprint(y)",
                                         metadata={"tags": ["solution", "keep"]})
    custom = nbformat.v4.new_code_cell("z = 3", metadata={"tags": ["solution"], "student_placeholder": "z = None"})
    ran = nbformat.v4.new_code_cell("x = 1")
    ran.outputs = [nbformat.v4.new_output("stream", text="old")]
    ran.execution_count = 4
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), ran, nbformat.v4.new_markdown_cell("**Exercise 1.** add"),
                solution, custom]
    return nb


def test_student_cell_keeps_the_prompt_and_a_runnable_placeholder():
    nb, n = student.student_notebook(_toy_notebook())
    assert n == 2
    cell = nb.cells[3]
    assert cell.source == "# Exercise: add one\n# to x.\n" + student.PLACEHOLDER
    assert cell.metadata["tags"] == ["keep", "exercise"] and not student.is_solution(cell)
    assert nb.cells[4].source == "# Exercise: write your solution here (see the cell above).\nz = None"
    assert "student_placeholder" not in nb.cells[4].metadata
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None
    assert _toy_notebook().cells[3].source.endswith("print(y)")  # the input was not modified
    compile(cell.source, "student", "exec")


def test_write_student_versions_writes_every_notebook_and_removes_stale(tmp_path):
    src, out = tmp_path / "nb", tmp_path / "student"
    src.mkdir()
    nbformat.write(_toy_notebook(), src / "03_toy.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), src / "04_plain.ipynb")
    (src / "scratch.ipynb").write_text("not a numbered notebook")
    out.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), out / "99_gone.ipynb")
    report = student.write_student_versions(src, out)
    assert report == {"03_toy.ipynb": 2, "04_plain.ipynb": 0}
    assert sorted(p.name for p in out.iterdir()) == ["03_toy.ipynb", "04_plain.ipynb"]
    toy = nbformat.read(out / "03_toy.ipynb", as_version=4)
    assert "Student version" in toy.cells[1].source and "2 exercise" in toy.cells[1].source
    assert not any(student.is_solution(c) for c in toy.cells)
    assert len(nbformat.read(out / "04_plain.ipynb", as_version=4).cells) == 1  # no banner without exercises
    assert student.with_exercises(out) == [out / "03_toy.ipynb"]  # the only one worth testing twice
    with pytest.raises(ValueError, match="no notebooks"):
        student.write_student_versions(tmp_path / "empty", out)


def test_cli_writes_the_real_notebooks(tmp_path, capsys):
    student.main([str(ROOT / "notebooks"), str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    assert "solution cell(s) replaced" in capsys.readouterr().out
    student.main(["--list-exercises", str(tmp_path)])
    listed = capsys.readouterr().out.split()
    assert {Path(p).name[:3] for p in listed} >= {"00_", "01_", "10_"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_are_announced_and_later_cells_never_need_a_solution(path):
    nb = nbformat.read(path, as_version=4)
    solutions = [i for i, c in enumerate(nb.cells) if student.is_solution(c)]
    if path.name.startswith(WITH_EXERCISES):
        assert solutions, f"{path.name} should have at least one exercise (a code cell tagged 'solution')"
    for i in solutions:
        before = next(c for c in reversed(nb.cells[:i]) if c.cell_type == "markdown" or not student.is_solution(c))
        assert before.cell_type == "markdown" and "Exercise" in before.source, \
            f"{path.name}: solution cell {i} needs a Markdown 'Exercise' cell before it"
        assert nb.cells[i].source.lstrip().startswith("#"), f"{path.name}: cell {i} should open with its prompt"
    code = [c for c in nb.cells if c.cell_type == "code"]
    regular_store = set().union(*(_names(_code(c), ast.Store) for c in code if not student.is_solution(c)))
    only_in_solutions = set().union(set(), *(_names(_code(nb.cells[i]), ast.Store) for i in solutions)) - regular_store
    for c in code:
        if not student.is_solution(c):
            used = _names(_code(c), ast.Load) & only_in_solutions
            assert not used, f"{path.name}: a later cell uses {sorted(used)}, defined only in a solution cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_points_at_this_notebook_and_install_keeps_torch(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    urls = re.findall(r"\(https://colab\.research\.google\.com/github/([^)\s]+)\)", text)
    from mfmda_lib.teaching.publish import ROOT, badge_line, kit_url

    if "github.com/" in kit_url(ROOT):  # a published kit on GitHub: the badge opens this very notebook
        assert urls, f"{path.name} has no Colab badge link"
        for url in urls:
            assert url.endswith(f"/blob/main/notebooks/{path.name}"), f"badge {url} does not open {path.name}"
    else:  # not on GitHub (or not published yet): the badge says to upload the notebook (tests/test_publish.py)
        assert badge_line(kit_url(ROOT), path.name) in text.splitlines(), f"{path.name}: badge out of date"
    install = next(c for c in nb.cells if c.cell_type == "code").source
    assert "pip" in install and "find_spec" in install, "the first code cell installs only what is missing"
    assert not re.search(r"""["'](torch|torchvision|torchaudio)(\[[^\]]*\])?([<>=~!][^"']*)?["']""", install), \
        "the install cell must never (re)install torch: hubs ship their own build"
    assert "--upgrade" not in install and "-U " not in install
