"""Generate the student version of every notebook: solutions out, stubs and prompts in, answers stripped.

Three kinds of tagged cells (cell metadata ``{"tags": ["solution"]}``):

- a **write-the-core exercise**: a code cell tagged ``solution`` that defines functions or classes
  (after a Markdown cell that starts the exercise with ``**Exercise``). The student version keeps the
  cell's leading comment lines (the prompt), its imports, and every function's and method's signature
  and docstring, and replaces each body by ``raise NotImplementedError("hint: ...")``. The hint is the
  ``# hint:`` comment inside that function (its following comment lines continue it), else the cell's.
  Class attributes stay; any other top-level statement of the cell is part of the answer and goes.
  Later cells may use the functions and classes: they still exist (the check cell of
  :mod:`mfmda_lib.teaching.exercises` catches the ``NotImplementedError`` and falls back to the library);
- an **open exercise**: a code cell tagged ``solution`` that defines nothing. The student version keeps
  its leading comment lines and adds a runnable placeholder (:data:`PLACEHOLDER`, or the cell's
  ``"student_placeholder"`` metadata), so the notebook still runs top to bottom: later cells never
  depend on what such a cell computes;
- an **answer**: a Markdown cell tagged ``solution`` (the answer key to a Questions block). The student
  version drops it.

A notebook with exercises also gets a banner and, after its first code cell (the install cell), a cell
that calls :func:`mfmda_lib.teaching.exercises.use_student_edition`: there a missing or wrong answer
falls back to the library with a notice, where the instructor's edition fails the run.

Run ``python -m course.student [SRC_DIR] [OUT_DIR]`` (defaults ``notebooks`` and
``build/student``); ``make student`` does that.
"""
from __future__ import annotations

import argparse
import ast
import copy
import re
from pathlib import Path

import nbformat

from mfmda_lib.io import atomic_write_bytes

__all__ = ["SOLUTION_TAG", "EXERCISE_TAG", "PLACEHOLDER", "EDITION_CELL", "is_solution", "is_answer", "stub_source",
           "student_cell", "student_notebook", "write_student_versions", "with_exercises"]

#: Cell tag of a solution cell, and of the cell that replaces it in the student version.
SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
#: What a removed open-exercise solution leaves behind (valid Python, defines nothing later cells need).
PLACEHOLDER = "answer = None  # your code here"
#: The hint of a stub whose function and cell name none.
DEFAULT_HINT = "see the exercise's Markdown cell above"
#: Inserted after the install cell of a student notebook with exercises.
EDITION_CELL = ("# Student edition: an exercise you have not written yet, or whose answer does not pass its check,\n"
                "# falls back to the library's version with a notice, so the notebook still runs to the end.\n"
                "from mfmda_lib.teaching import exercises\n"
                "exercises.use_student_edition()")
_HINT = re.compile(r"^\s*#\s*hint:\s*(.*)$", re.IGNORECASE)


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def is_solution(cell) -> bool:
    """Whether a notebook cell is a tagged solution code cell."""
    return cell.get("cell_type") == "code" and SOLUTION_TAG in _tags(cell)


def is_answer(cell) -> bool:
    """Whether a notebook cell is a tagged answer (a Markdown cell of the answer key)."""
    return cell.get("cell_type") == "markdown" and SOLUTION_TAG in _tags(cell)


# ---------------------------------------------------------------------------------------------
# stubs of write-the-core exercises
# ---------------------------------------------------------------------------------------------

def _hint(lines: list[str], first: int, last: int) -> str | None:
    """The ``# hint:`` comment (with its continuation comment lines) in 1-based lines ``first..last``."""
    for i in range(first - 1, last):
        match = _HINT.match(lines[i])
        if match:
            parts = [match.group(1).strip()]
            for line in lines[i + 1:last]:
                text = line.strip()
                if not text.startswith("#") or _HINT.match(line):
                    break
                parts.append(text.lstrip("#").strip())
            return " ".join(p for p in parts if p)
    return None


def _docstring_end(node: ast.AST) -> int | None:
    """Last line of ``node``'s docstring, if its body opens with one."""
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno
    return None


def _header(lines: list[str], node: ast.AST) -> list[str]:
    """Decorators and signature lines of a def or class (trailing comments and blank lines dropped)."""
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    if node.body[0].lineno == node.lineno:
        raise ValueError(f"line {node.lineno}: put the body of {node.name!r} on its own lines "
                         "(the student stub replaces it)")
    header = lines[start - 1:node.body[0].lineno - 1]
    while header and (not header[-1].strip() or header[-1].strip().startswith("#")):
        header.pop()
    return header


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _stub_function(lines: list[str], node: ast.AST, cell_hint: str) -> list[str]:
    out = _header(lines, node)
    doc_end = _docstring_end(node)
    if doc_end is not None:
        out += lines[node.body[0].lineno - 1:doc_end]
    hint = _hint(lines, node.lineno, node.end_lineno) or cell_hint
    out.append(f"{_indent(lines[node.body[0].lineno - 1])}raise NotImplementedError({'hint: ' + hint!r})")
    return out


def _stub_class(lines: list[str], node: ast.ClassDef, cell_hint: str) -> list[str]:
    out = _header(lines, node)
    body = node.body
    if _docstring_end(node) is not None:
        out += lines[body[0].lineno - 1:body[0].end_lineno]
        body = body[1:]
    kept = False
    for child in body:
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += ([""] if kept else []) + _stub_function(lines, child, cell_hint)
            kept = True
        elif isinstance(child, (ast.Assign, ast.AnnAssign)):
            out += lines[child.lineno - 1:child.end_lineno]
            kept = True
    if not kept and _docstring_end(node) is None:
        out.append(f"{_indent(lines[node.body[0].lineno - 1])}pass")
    return out


def stub_source(source: str) -> str | None:
    """The student stub of a solution cell that defines functions or classes; ``None`` if it defines none.

    Keeps the leading comment lines, the imports, every signature and docstring, and class
    attributes; each function or method body becomes ``raise NotImplementedError("hint: ...")``.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ValueError(f"a solution cell does not parse (line {error.lineno}): {error.msg}") from error
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    if not any(isinstance(node, defs) for node in tree.body):
        return None
    lines = source.splitlines()
    prompt = []
    for line in lines:
        if not line.lstrip().startswith("#"):
            break
        prompt.append(line)
    cell_hint = _hint(prompt, 1, len(prompt)) or DEFAULT_HINT
    out = list(prompt)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out += lines[node.lineno - 1:node.end_lineno]
        elif isinstance(node, ast.ClassDef):
            out += ["", ""] + _stub_class(lines, node, cell_hint)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += ["", ""] + _stub_function(lines, node, cell_hint)
    while len(out) > len(prompt) and not out[len(prompt)].strip():
        del out[len(prompt)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# cells and notebooks
# ---------------------------------------------------------------------------------------------

def student_cell(cell):
    """The student replacement of one solution cell: a stub (functions, classes) or prompt + placeholder.

    Args:
        cell: an nbformat code cell tagged ``solution``.

    Returns:
        A new code cell (tag ``exercise`` instead of ``solution``, no outputs).
    """
    source = stub_source(cell["source"])
    if source is None:
        prompt = []
        for line in cell["source"].splitlines():
            if not line.lstrip().startswith("#"):
                break
            prompt.append(line)
        if not prompt:
            prompt = ["# Exercise: write your solution here (see the cell above)."]
        source = "\n".join(prompt + [cell.get("metadata", {}).get("student_placeholder", PLACEHOLDER)])
    tags = [t for t in _tags(cell) if t != SOLUTION_TAG] + [EXERCISE_TAG]
    metadata = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("tags", "student_placeholder")}
    return nbformat.v4.new_code_cell(source, metadata={**metadata, "tags": tags})


def student_notebook(nb):
    """A copy of notebook ``nb`` with every solution cell replaced by :func:`student_cell`, answers removed.

    Outputs are cleared. With at least one exercise, :data:`EDITION_CELL` follows the first code cell.

    Returns:
        ``(notebook, n_replaced)``: the number of solution code cells replaced.
    """
    out = copy.deepcopy(nb)
    cells, n = [], 0
    for cell in out.cells:
        if is_answer(cell):
            continue
        if is_solution(cell):
            cell = student_cell(cell)
            n += 1
        elif cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    if n:
        first_code = next(i for i, c in enumerate(cells) if c.get("cell_type") == "code")
        cells.insert(first_code + 1, nbformat.v4.new_code_cell(EDITION_CELL, metadata={"tags": ["student-edition"]}))
    out.cells = cells
    return out, n


def write_student_versions(src: str | Path = "notebooks", out: str | Path = "build/student") -> dict[str, int]:
    """Write the student version of every ``NN_*.ipynb`` in ``src`` to ``out`` (same file names).

    Student notebooks of source notebooks that no longer exist are removed from ``out``.

    Returns:
        File name -> number of solution cells removed.
    """
    src, out = Path(src), Path(out)
    sources = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise ValueError(f"no notebooks named NN_*.ipynb in {src.resolve()}")
    out.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in out.glob("[0-9][0-9]_*.ipynb")) - {p.name for p in sources}:
        (out / stale).unlink()
    report = {}
    for path in sources:
        nb, n = student_notebook(nbformat.read(path, as_version=4))
        if n:
            banner = (f"*Student version of `notebooks/{path.name}`, generated by `make student`: "
                      f"{n} exercise cell(s) left for you to fill in; the answers to the Questions are in the "
                      f"instructor's edition.*")
            nb.cells.insert(1, nbformat.v4.new_markdown_cell(banner))
        atomic_write_bytes(out / path.name, nbformat.writes(nb).encode("utf-8"))
        report[path.name] = n
    return report


def with_exercises(folder: str | Path) -> list[Path]:
    """The student notebooks in ``folder`` that hold at least one exercise cell.

    The others are the original notebooks without outputs, so testing them again adds nothing.
    """
    return [p for p in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
            if any(EXERCISE_TAG in c.get("metadata", {}).get("tags", []) for c in nbformat.read(p, as_version=4).cells)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the student version (solutions removed) of every notebook.")
    parser.add_argument("src", nargs="?", default="notebooks", help="folder of NN_*.ipynb (default: notebooks)")
    parser.add_argument("out", nargs="?", default="build/student", help="output folder (default: build/student)")
    parser.add_argument("--list-exercises", metavar="DIR",
                        help="only print the student notebooks in DIR that have exercises (for the test run)")
    args = parser.parse_args(argv)
    if args.list_exercises:
        print("\n".join(str(p) for p in with_exercises(args.list_exercises)))
        return
    report = write_student_versions(args.src, args.out)
    for name, n in report.items():
        print(f"{args.out}/{name}: {n} solution cell(s) replaced")


if __name__ == "__main__":
    main()
