"""Student versions of the notebooks, exercise hygiene, and Colab badges / install cells."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

from course import student

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
    core = nbformat.v4.new_code_cell(
        '# Exercise 3: write twice(v).\n# Hint: add it to itself.\nimport math\n\nCONSTANT = 2\n\n\n'
        'def twice(v):\n    """Two times v."""\n    # hint: v + v, or 2 * v\n    return v + v\n\n\n'
        'class Doubler:\n    factor = 2\n\n    def __call__(self, v):\n        return twice(v)\n',
        metadata={"tags": ["solution"]})
    ran = nbformat.v4.new_code_cell("x = 1")
    ran.outputs = [nbformat.v4.new_output("stream", text="old")]
    ran.execution_count = 4
    answer = nbformat.v4.new_markdown_cell("**Answers.** 1. Because.", metadata={"tags": ["solution"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), ran, nbformat.v4.new_markdown_cell("**Exercise 1.** add"),
                solution, custom, nbformat.v4.new_markdown_cell("**Exercise 3.** twice"), core,
                nbformat.v4.new_markdown_cell("## Questions\n1. Why?"), answer]
    return nb


def test_student_cell_keeps_the_prompt_and_a_runnable_placeholder():
    nb, n = student.student_notebook(_toy_notebook())
    assert n == 3
    assert nb.cells[2].source == student.EDITION_CELL  # after the first code cell
    cell = nb.cells[4]
    assert cell.source == "# Exercise: add one\n# to x.\n" + student.PLACEHOLDER
    assert cell.metadata["tags"] == ["keep", "exercise"] and not student.is_solution(cell)
    assert nb.cells[5].source == "# Exercise: write your solution here (see the cell above).\nz = None"
    assert "student_placeholder" not in nb.cells[5].metadata
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None
    assert _toy_notebook().cells[3].source.endswith("print(y)")  # the input was not modified
    compile(cell.source, "student", "exec")


def test_a_write_the_core_solution_becomes_a_stub_that_raises_its_hint():
    nb, _ = student.student_notebook(_toy_notebook())
    stub = nb.cells[7].source
    assert "return v + v" not in stub and "CONSTANT" not in stub and "return twice" not in stub
    assert stub.startswith("# Exercise 3: write twice(v).") and "import math" in stub
    assert 'def twice(v):\n    """Two times v."""\n    raise NotImplementedError' in stub
    assert "factor = 2" in stub and "def __call__(self, v):" in stub
    namespace = {}
    exec(compile(stub, "stub", "exec"), namespace)
    with pytest.raises(NotImplementedError, match="hint: v \\+ v, or 2 \\* v"):
        namespace["twice"](1)
    with pytest.raises(NotImplementedError, match="hint: add it to itself"):  # the cell's hint
        namespace["Doubler"]()(1)
    assert student.stub_source("# no function here\nx = 1") is None
    with pytest.raises(ValueError, match="own lines"):
        student.stub_source("def f(): return 1")


def test_answers_are_stripped_from_the_student_version():
    nb, _ = student.student_notebook(_toy_notebook())
    assert not any(student.is_answer(c) or "Because." in c.source for c in nb.cells)
    assert nb.cells[-1].source.startswith("## Questions")


def test_write_student_versions_writes_every_notebook_and_removes_stale(tmp_path):
    src, out = tmp_path / "nb", tmp_path / "student"
    src.mkdir()
    nbformat.write(_toy_notebook(), src / "03_toy.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), src / "04_plain.ipynb")
    (src / "scratch.ipynb").write_text("not a numbered notebook")
    out.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), out / "99_gone.ipynb")
    report = student.write_student_versions(src, out)
    assert report == {"03_toy.ipynb": 3, "04_plain.ipynb": 0}
    assert sorted(p.name for p in out.iterdir()) == ["03_toy.ipynb", "04_plain.ipynb"]
    toy = nbformat.read(out / "03_toy.ipynb", as_version=4)
    assert "Student version" in toy.cells[1].source and "3 exercise" in toy.cells[1].source
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


def _top_level_stores(source: str) -> set[str]:
    """Names a cell binds at its top level with assignments, loops or ``with`` (not defs, classes, imports)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
            continue
        names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def _core_names(cell) -> list[str]:
    """Functions and classes a solution cell defines at its top level (a write-the-core exercise)."""
    return [n.name for n in ast.parse(_code(cell)).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _core_exercises(path: Path) -> list[tuple[int, list[str]]]:
    nb = nbformat.read(path, as_version=4)
    return [(i, _core_names(c)) for i, c in enumerate(nb.cells) if student.is_solution(c) and _core_names(c)]


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
    # the student stub keeps a solution's functions, classes and imports; anything else it binds is gone
    only_in_solutions = set().union(set(), *(_top_level_stores(_code(nb.cells[i])) for i in solutions)) - regular_store
    for c in code:
        if not student.is_solution(c):
            used = _names(_code(c), ast.Load) & only_in_solutions
            assert not used, f"{path.name}: a later cell uses {sorted(used)}, defined only in a solution cell"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name >= "01"], ids=lambda p: p.name)
def test_every_notebook_from_01_has_write_the_core_exercises(path):
    wanted = 2 if "05" <= path.name[:2] <= "09" else 1
    assert len(_core_exercises(path)) >= wanted, f"{path.name} needs {wanted} write-the-core exercise(s)"


def test_there_are_at_least_14_write_the_core_exercises():
    assert sum(len(_core_exercises(p)) for p in NOTEBOOKS) >= 14


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_core_exercise_is_checked_then_switched(path):
    nb = nbformat.read(path, as_version=4)
    for i, names in _core_exercises(path):
        after = [c.source for c in nb.cells[i + 1:i + 3] if c.cell_type == "code"]
        assert len(after) == 2 and "exercises.check(" in after[0] and ".choose(" in after[1], \
            f"{path.name}: the solution cell {i} ({names}) needs a check cell and a switch cell right after it"
        assert any(name in after[0] for name in names), f"{path.name}: the check after cell {i} must call {names}"
        assert student.stub_source(nb.cells[i].source) is not None


def _questions(source: str) -> list[str]:
    block = source.split("## Questions", 1)[1]
    return re.findall(r"^(\d+)\. ", block, flags=re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_question_is_answered_in_a_solution_cell_the_student_never_sees(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    blocks = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Questions" in c.source]
    assert blocks, f"{path.name} has no Questions block"
    for i in blocks:
        answer = nb.cells[i + 1] if i + 1 < len(nb.cells) else {}
        assert student.is_answer(answer), f"{path.name}: the Questions of cell {i} need a Markdown solution cell after them"
        asked = _questions(nb.cells[i].source)
        answered = re.findall(r"^(\d+)\. ", answer.source, flags=re.M)
        assert asked and answered == asked, f"{path.name}: questions {asked} but answers {answered}"
    out, _ = student.student_notebook(nb)
    assert not any(student.is_answer(c) for c in out.cells)
    assert not any(nb.cells[i + 1].source in c.source for c in out.cells for i in blocks)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_draws_its_method_and_ends_with_its_references(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert re.search(r"diagrams\.\w+_diagram\(", code), f"{path.name} draws no method diagram"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## References"), \
        f"{path.name} must end with a '## References' cell"
    assert len(re.findall(r"^- ", last.source, flags=re.M)) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_points_at_this_notebook_and_install_keeps_torch(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    urls = re.findall(r"\(https://colab\.research\.google\.com/github/([^)\s]+)\)", text)
    from course.publish import ROOT, badge_line, kit_url

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
