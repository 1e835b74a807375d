"""Keep the module layering of STYLE.md honest: nothing imports upward; triton_kernels is a leaf; importing the
package imports neither triton nor the framework adapters."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "errors": 0, "config": 1, "_validate": 1, "hits": 1, "_device": 2, "layout": 2,
    "scoring": 3, "strided": 3, "tokenization": 3, "checkpoints": 3, "kmeans": 3, "docstore": 3, "_kernels": 3,
    "encoder": 4, "codec": 4, "builder": 5, "storage": 5, "plaid": 6, "index": 7,
    "training": 8, "evaluation": 8, "demo": 9, "cli": 9,
}


def imports_of(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            yield node.module.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            for a in node.names:
                yield a.name


def test_no_upward_imports():
    bad = []
    for path in (ROOT / "colbert_retriever").glob("*.py"):
        mod = path.stem
        if mod not in LAYER:
            continue
        for dep in imports_of(path):
            if dep in LAYER and LAYER[dep] > LAYER[mod]:
                bad.append(f"{mod} imports {dep}")
    assert not bad, bad


def test_triton_kernels_is_a_leaf():
    for path in (ROOT / "triton_kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            for n in names:
                assert n.split(".")[0] in ("triton", "torch", "math", "typing", "__future__", "functools", "os"), (path, n)


def test_import_is_light():
    code = ("import sys, colbert_retriever; "
            "bad = [m for m in ('triton', 'faiss', 'langchain_core', 'llama_index', 'transformers') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
