"""The library's size limits: no module over 400 lines, no function over 80 (issue 15)."""
import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "mfmda_lib"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def oversized(path: Path) -> list[str]:
    """What in ``path`` breaks a limit: the module's line count, or a function's (``end_lineno - lineno + 1``)."""
    text = path.read_text(encoding="utf-8")
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{path}: {lines} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno} {node.name}: {length} lines "
                             f"(max {MAX_FUNCTION_LINES})")
    return found


def test_the_library_is_found():
    assert len(_modules()) > 50 and (LIBRARY / "profiles.py").is_file()


def test_no_module_over_400_lines_and_no_function_over_80():
    offenders = [line for path in _modules() for line in oversized(path)]
    assert not offenders, "split these along a seam (one job per module, a helper per step):\n" + "\n".join(offenders)


@pytest.mark.parametrize("module_lines, function_lines, expected", [
    (MAX_MODULE_LINES, MAX_FUNCTION_LINES, 0),
    (MAX_MODULE_LINES + 1, MAX_FUNCTION_LINES, 1),
    (MAX_MODULE_LINES, MAX_FUNCTION_LINES + 1, 1),
])
def test_the_check_counts_lines_as_the_limits_say(tmp_path, module_lines, function_lines, expected):
    body = "\n".join(f"    x = {i}" for i in range(function_lines - 1))
    text = f"def f():\n{body}\n" + "\n" * (module_lines - function_lines)
    path = tmp_path / "m.py"
    path.write_text(text)
    assert len(text.splitlines()) == module_lines
    assert len(oversized(path)) == expected
