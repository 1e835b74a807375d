"""Keep the floor plan honest: the package is rooms (subpackages, and a few top-level modules) on floors; a module
imports only from rooms on lower floors or from its own room, with no cycle inside a room; triton_kernels is a leaf;
importing the package imports neither triton nor the framework adapters; no test or benchmark assigns to an
attribute of a library module (behaviour is steered by arguments, never by swapping module state)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "colbert_retriever"

FLOORS = [
    # 0: foundations
    {"errors", "hits", "_version"},
    # 1: configuration, argument checks, devices and precision; the index folder (files, SQLite, BM25, filters)
    {"config", "device", "_validate", "store"},
    # 2: kernels: the dispatcher, numba kernels, the torch reference MaxSim, the door to triton_kernels
    {"kernels"},
    # 3: the encoder and its parts, the model cache
    {"model"},
    # 4: the residual codec, k-means, ragged arrays; training (beside the model)
    {"codec", "training"},
    # 5: query time: snapshots, PLAID's plan and stages, modes and fusion, threads
    {"search"},
    # 6: writes: building, adding, compaction, long-text policy, precomputed embeddings
    {"indexing"},
    # 7: the facade
    {"index"},
    # 8: the public names; what sits on the public API
    {"__init__", "evaluation"},
    # 9: applications: the command line, Ray, the server
    {"cli", "distributed", "serve"},
]
FLOOR = {room: i for i, floor in enumerate(FLOORS) for room in floor}
DOORS = {("kernels", "triton_kernels"), ("serve", "distributed"), ("cli", "serve")}
"""Imports allowed across the floors: the kernels package is the only door to ``triton_kernels`` (lazily); on
floor 9 the server serves a sharded index through ``distributed``, and the CLI's ``serve`` command starts it."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def room(module: str) -> str:
    """A subpackage's modules live in its room; a top-level module is a room of its own."""
    return module.split(".")[0]


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path) -> set:
    """Package-relative module names the file imports (a name imported from a package counts as that package's
    module when one of that name exists, else as the package itself)."""
    me = module_name(path)
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = [] if me == "__init__" else me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "colbert_retriever":
                target = node.module.split(".")[1:]
            else:
                continue
            for a in node.names:
                sub = ".".join(target + [a.name])
                targets.append(sub if sub in MODULES or a.name in ("triton_kernels", "integrations")
                               else ".".join(target) or "__init__")
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".", 1)[1] for a in node.names
                       if a.name.split(".")[0] == "colbert_retriever" and "." in a.name]
        deps.update(targets)
    return {d.split(".")[0] if room(d) in ("triton_kernels", "integrations") else d for d in deps} - {me}


def test_every_room_has_a_floor_and_imports_only_lower_floors():
    missing = sorted({room(m) for m in MODULES} - set(FLOOR))
    assert not missing, f"packages or top-level modules without a floor in tests/test_layering.py: {missing}"
    bad = []
    for me, path in sorted(MODULES.items()):
        for dep in sorted(imports_of(path)):
            a, b = room(me), room(dep)
            if a == b or (a, b) in DOORS:
                continue
            if b not in FLOOR:
                bad.append(f"{me} imports {dep}, which has no floor")
            elif FLOOR[b] >= FLOOR[a]:
                bad.append(f"{me} (floor {FLOOR[a]}: {a}) imports {dep} (floor {FLOOR[b]}: {b})")
    assert not bad, bad


def test_no_import_cycle_inside_a_room():
    graph = {m: {d for d in imports_of(p) if d in MODULES and room(d) == room(m)} for m, p in MODULES.items()}
    done, active = set(), []

    def visit(m):
        if m in active:
            raise AssertionError(f"import cycle: {' -> '.join(active[active.index(m):] + [m])}")
        if m in done:
            return
        active.append(m)
        for d in sorted(graph[m]):
            visit(d)
        active.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_floor_map_names_only_existing_rooms():
    existing = {room(m) for m in MODULES}
    assert set(FLOOR) - {"serve"} <= existing, set(FLOOR) - existing


def test_every_package_says_what_it_owns():
    """Each subpackage's ``__init__`` docstring says what it owns and what it may import."""
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80 and "import" in doc, init


def test_triton_kernels_is_a_leaf():
    for path in (ROOT / "triton_kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            for n in names:
                allowed = ("triton", "torch", "math", "typing", "__future__", "functools", "os")
                assert n.split(".")[0] in allowed, (path, n)


def test_integrations_use_the_public_api_only():
    """The adapters import names that ``colbert_retriever`` exports (or its documented modules), never the
    package's private modules."""
    for path in (ROOT / "integrations").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("colbert_retriever"):
                mod = node.module.split(".")
                assert all(not part.startswith("_") for part in mod), (path.name, node.module)


def test_import_is_light():
    code = ("import sys, colbert_retriever; "
            "bad = [m for m in ('triton', 'faiss', 'langchain_core', 'llama_index', 'transformers', 'numba') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _library_names(tree: ast.AST) -> set:
    """Names bound to colbert_retriever modules, classes or functions by the file's imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "colbert_retriever":
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "colbert_retriever":
                    names.add(a.asname or a.name.split(".")[0])
    return names


def test_no_test_or_benchmark_assigns_to_library_attributes():
    """Tests and benchmarks steer the library through arguments: no ``module.ATTR = ...`` and no
    ``monkeypatch.setattr(module_or_class, ...)`` on anything imported from colbert_retriever."""
    bad = []
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    for path in files:
        if "work" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text())
        lib = _library_names(tree)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in lib:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} assigns {sub.value.id}.{sub.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr"
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in lib):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} setattr on {node.args[0].id}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in lib):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} setattr on {node.args[0].id}")
    assert not bad, bad
