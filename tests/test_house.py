"""The house rules that a reader of the code can check mechanically (docs/DESIGN.md, STYLE 1, 17, 18):
no import circle inside almol_jax, between modules or between rooms (subpackages), no library file over 450 lines, no function over 100 lines, and
the CPU wing reached through its two doors only (the runtime module and the model's kernel table),
with no other library file asking which backend it runs on.

Read from the source with `ast` (nothing is imported), so a violation names its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "almol_jax"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 100
CPU_WING = "almol_jax.cpu"
# the wing's two doors: the runtime module any entry point may call, and the model's kernel
# table, the one library module outside the wing that may reach its kernels
RUNTIME_DOOR = "almol_jax.cpu.runtime"
KERNEL_TABLE = "almol_jax.model.kernels"
BACKEND_QUESTIONS = ("default_backend",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_files() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _under_type_checking(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:` blocks (never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    return skipped


def _imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported almol_jax module, line) for every import in the file, function-local ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _under_type_checking(tree)
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    out.append((full, node.lineno))
                elif base in modules:
                    out.append((base, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    files = _library_files()
    modules = set(files)
    return {m: {dep for dep, _ in _imports(p, modules) if dep != m} for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_package_init_edge(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own submodule, or a submodule importing its package:
    Python resolves both without a partially initialised module, so neither is a circle."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_circle():
    graph = _graph()
    graph = {a: {b for b in deps if not _is_package_init_edge(a, b)} for a, deps in graph.items()}
    assert _cycles(graph) == []


def _room(module: str) -> str:
    """almol_jax.train.step -> almol_jax.train: the package (or root module) a module lives in."""
    return ".".join(module.split(".")[:2])


def test_no_circle_between_rooms():
    """The rooms (almol_jax's subpackages and root modules) form floors: no room imports one
    that imports it back, even through function-local imports of different modules."""
    rooms: dict[str, set[str]] = {}
    for a, deps in _graph().items():
        if a == "almol_jax":  # the package's lazy public API sits above every room
            continue
        rooms.setdefault(_room(a), set()).update(
            _room(b) for b in deps if _room(b) != _room(a) and b != "almol_jax"
        )
    assert _cycles(rooms) == []


def test_cycle_finder_finds_a_circle():
    """The checker itself: a two-module circle is reported, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_library_files_are_short():
    long = {
        str(p.relative_to(REPO_ROOT)): n
        for p in _library_files().values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    }
    assert long == {}, f"library files over {MAX_FILE_LINES} lines"


@pytest.mark.parametrize("root", ["almol_jax", "bench", "train.py", "eval.py"])
def test_functions_are_short(root):
    paths = [REPO_ROOT / root] if root.endswith(".py") else sorted((REPO_ROOT / root).rglob("*.py"))
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({n})")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines"


def _in_wing(module: str) -> bool:
    return module == CPU_WING or module.startswith(CPU_WING + ".")


def test_cpu_wing_is_reached_through_its_two_doors_only():
    files = _library_files()
    modules = set(files)
    missing = {RUNTIME_DOOR, KERNEL_TABLE} - modules
    assert not missing, f"the CPU wing's doors {sorted(missing)} are missing"
    strays = [
        f"{files[m].relative_to(REPO_ROOT)}:{line} imports {dep}"
        for m, path in files.items()
        if not _in_wing(m) and m != KERNEL_TABLE
        for dep, line in _imports(path, modules)
        if _in_wing(dep) and dep != RUNTIME_DOOR
    ]
    assert strays == []


def test_no_backend_question_outside_the_wing():
    """Only the CPU wing and the kernel table (resolving `model.kernels: auto`) ask which backend
    the process runs on; no other library file branches on it."""
    asked = []
    for m, path in _library_files().items():
        if _in_wing(m) or m == KERNEL_TABLE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in BACKEND_QUESTIONS:
                asked.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.attr}")
    assert asked == []
