"""The layout of the test suite: fixtures in conftest.py, helpers in helpers.py, luigi tasks in *_tasks.py modules.

Test files import from those, never from each other or from conftest.py; and no test file defines a luigi task or
is named as a task module (``--module tests.test_x``), so that the luigi command line never imports a test file.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import luigi

import astra

TESTS = Path(__file__).resolve().parent
#: Modules no other file of the suite may import: the test files, and conftest.py (pytest loads it itself).
PRIVATE = re.compile(r"^(tests)?\.?(test_\w+|conftest)$")
#: A test file (or conftest) named as a module, e.g. in ``luigi --module tests.test_x``.
NAMED = re.compile(r"\btests\.(test_\w+|conftest)\b")


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an ``import`` statement anywhere in ``tree`` names (relative ones with their leading dots)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append(module)
            if node.module in (None, "tests"):  # from tests import test_x; from . import test_x
                found += [f"{module}.{alias.name}".replace("..", ".") for alias in node.names]
    return found


def private_imports(path: Path) -> list[str]:
    return [name for name in imported_modules(ast.parse(path.read_text())) if PRIVATE.match(name.lstrip("."))]


def task_classes(source: str, namespace: dict) -> list[str]:
    """The luigi task classes ``source`` defines anywhere (at the top, or inside a function); the names its bases
    are looked up in are those of ``namespace``, the module's own."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(_is_task(base, namespace, found) for base in node.bases):
            found.append(node.name)
    return found


def _is_task(base: ast.expr, namespace: dict, found: list[str]) -> bool:
    if isinstance(base, ast.Name) and base.id in found:  # a task class of the same file
        return True
    try:
        value = eval(compile(ast.Expression(base), "<base>", "eval"), dict(namespace))
    except Exception:  # a name local to a function: not a task unless found above
        return False
    return isinstance(value, type) and issubclass(value, luigi.Task)


def names_a_test_module(path: Path) -> list[str]:
    """Test files (or conftest) named where a task module goes: after ``--module``, in a list or a call's
    arguments, or inside one string (``"luigi --module tests.test_x ..."``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        texts = [item.value if isinstance(item, ast.Constant) else None for item in _items(node)]
        found += [after for before, after in zip(texts, texts[1:]) if before == "--module" and _names(after)]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "--module" in node.value:
            found += [node.value] if _names(node.value) else []
    return found


def _items(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, (ast.List, ast.Tuple)):
        return node.elts
    return node.args if isinstance(node, ast.Call) else []


def _names(text: object) -> bool:
    return isinstance(text, str) and bool(NAMED.search(text))


def test_no_file_of_the_suite_imports_a_test_file_or_conftest():
    found = {path.name: private_imports(path) for path in sorted(TESTS.glob("*.py"))}
    assert not {name: modules for name, modules in found.items() if modules}, (
        "put shared fixtures in tests/conftest.py and shared helpers in tests/helpers.py"
    )


def test_no_test_file_defines_a_luigi_task():
    found = {
        path.name: task_classes(path.read_text(), vars(importlib.import_module(f"tests.{path.stem}")))
        for path in sorted(TESTS.glob("test_*.py"))
    }
    assert not {name: classes for name, classes in found.items() if classes}, (
        "move the tasks into a task module of their own, tests/<topic>_tasks.py"
    )


def test_no_two_task_modules_define_a_task_of_the_same_name():
    """pytest-xdist may run any two test files in one process: two task classes of one name there (in the tests', the
    benchmarks' or the example's task modules), and luigi refuses both (TaskClassAmbigiousException), which fails a
    test only when the files happen to meet."""
    repo = TESTS.parent
    # bench/startup*_tasks.py are left out: bench/startup.py copies them out and times each in a process alone.
    bench = [path for path in (repo / "bench").glob("*tasks.py") if not path.name.startswith("startup")]
    modules = [*TESTS.glob("*_tasks.py"), *bench, *(repo / "workflows").glob("*.py")]
    defined: dict[str, list[str]] = {}
    for path in sorted(modules):
        module = ".".join(path.relative_to(repo).with_suffix("").parts).removesuffix(".__init__")
        for name in task_classes(path.read_text(), vars(importlib.import_module(module))):
            defined.setdefault(name, []).append(str(path.relative_to(repo)))
    assert {name: files for name, files in defined.items() if len(files) > 1} == {}


def test_no_file_names_a_test_file_as_a_module():
    found = {path.name: names_a_test_module(path) for path in sorted(TESTS.glob("*.py")) if path != Path(__file__)}
    assert not {name: texts for name, texts in found.items() if texts}, (
        "luigi and astra commands take task modules (tests.<topic>_tasks), never test files"
    )


def test_the_checks_find_what_they_look_for(tmp_path):
    """The three checks above, on a made-up test file that breaks every rule."""
    assert PRIVATE.match("tests.test_claims") and PRIVATE.match("conftest") and PRIVATE.match("test_cli")
    assert not PRIVATE.match("tests.claims_tasks") and not PRIVATE.match("tests.helpers")
    bad = tmp_path / "test_bad_layout.py"
    bad.write_text(
        "import luigi\nimport astra\nfrom tests.test_claims import Hold\nfrom tests.conftest import POSTGRES\n"
        "from . import test_cli\nfrom .test_values import assert_same\nfrom tests.helpers import run_luigi\n"
        "class Plain(luigi.Task):\n    pass\n"
        "class Child(Plain):\n    pass\n"
        "class NotATask(dict):\n    pass\n"
        "def test_x():\n    class Local(astra.BaseTask):\n        pass\n"
        "    run_luigi('--module', 'tests.test_x', 'Local')\n"
        "    return {'task_module': 'tests.test_bad_layout'}, 'luigi --module tests.conftest Local'\n"
    )
    assert private_imports(bad) == ["tests.test_claims", "tests.conftest", ".test_cli", ".test_values"]
    assert task_classes(bad.read_text(), {"luigi": luigi, "astra": astra}) == ["Plain", "Child", "Local"]
    assert names_a_test_module(bad) == ["tests.test_x", "luigi --module tests.conftest Local"]
