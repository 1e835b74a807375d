"""Keep the module layering honest: every module of the package (subpackages included) has a layer; a module
imports only modules of lower layers (never upward, never sideways within its layer); triton_kernels is a leaf;
importing the package imports neither triton nor the framework adapters; no test or benchmark assigns to an
attribute of a library module (behaviour is steered by arguments, never by swapping module state)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "colbert_retriever"

LAYERS = [
    # 0: foundations
    {"errors", "_version", "hits", "fusion", "_halfgemm", "_parallel", "scoring", "strided", "kmeans"},
    # 1: configuration, validation, formats
    {"config", "_validate", "filters", "layout", "_device", "ingest", "lexical", "_bert"},
    # 2: parts that read configuration
    {"tokenization", "checkpoints", "_kernels", "storage", "docstore", "training.data", "training.losses"},
    # 3: assembling models; the codec
    {"_loading", "codec", "_numba"},
    # 4: the encoder; the index's arrays
    {"encoder", "arrays", "external"},
    # 5: the model cache, search stages, segment building, training loop
    {"models", "stages", "builder", "training.trainer"},
    # 6: planning and running a search; reading a folder
    {"plaid", "reader", "training"},
    # 7: query time over a snapshot; writes
    {"retrieval", "writer"},
    # 8: compaction; indexes of precomputed embeddings
    {"compaction", "embedded"},
    # 9: the facade
    {"index"},
    # 10: the package, and what sits on the public API
    {"__init__", "evaluation", "distributed"},
    # 11: the command line's commands; the demo
    {"_cli_commands", "demo"},
    # 12: the command line
    {"cli"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}
DOORS = {("_kernels", "triton_kernels"), ("_kernels", "_numba")}
"""Lazy imports allowed across the layering: the kernel dispatcher is the only door to the kernel modules."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def _resolve(importer: str, is_pkg: bool, level: int, module: str, names: list) -> list:
    """Package-relative module names an import refers to (names imported from a package may be modules)."""
    pkg = importer.split(".") if is_pkg and importer != "__init__" else importer.split(".")[:-1]
    base = pkg[: len(pkg) - (level - 1)] if level > 1 else pkg
    target = base + (module.split(".") if module else [])
    out = []
    if not target:  # "from . import x" at the top: x is a module, or a name from __init__
        for n in names:
            sub = n in ("triton_kernels", "integrations") or (PKG / f"{n}.py").exists() or (PKG / n).is_dir()
            out.append(n if sub else "__init__")
        return out
    mod = ".".join(target)
    sub = [f"{mod}.{n}" for n in names if (PKG / Path(*target) / f"{n}.py").exists()]
    return sub or [mod]


def imports_of(path: Path) -> set:
    me = module_name(path)
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                deps.update(_resolve(me, path.name == "__init__.py", node.level, node.module or "", names))
            elif node.module and node.module.split(".")[0] == "colbert_retriever":
                rest = node.module.split(".")[1:]
                deps.update(_resolve("__init__", True, 1, ".".join(rest), names))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "colbert_retriever" and "." in a.name:
                    deps.add(".".join(a.name.split(".")[1:]))
    return {d.split(".")[0] if d.split(".")[0] in ("triton_kernels", "integrations") else d for d in deps} - {me}


def test_every_module_has_a_layer_and_imports_only_lower_layers():
    missing, bad = [], []
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        if me not in LAYER:
            missing.append(me)
            continue
        for dep in sorted(imports_of(path)):
            if (me, dep) in DOORS:
                continue
            if dep not in LAYER:
                bad.append(f"{me} imports {dep}, which has no layer")
            elif LAYER[dep] >= LAYER[me]:
                bad.append(f"{me} (layer {LAYER[me]}) imports {dep} (layer {LAYER[dep]})")
    assert not missing, f"modules without a layer in tests/test_layering.py: {missing}"
    assert not bad, bad


def test_layer_map_names_only_existing_modules():
    existing = {module_name(p) for p in PKG.rglob("*.py")}
    assert set(LAYER) <= existing, set(LAYER) - existing


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
