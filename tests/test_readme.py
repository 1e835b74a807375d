"""Every code block of README.md runs: Python blocks in order in one namespace, shell blocks with bash, all in a
fresh folder (offline). A block preceded by ``<!-- readme-test: skip (reason) -->`` is skipped with that reason;
only commands that run the test suite itself, or need a network, a GPU or a cluster, may be."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```",
                   re.S)


def blocks():
    text = (ROOT / "README.md").read_text()
    out = []
    for m in FENCE.finditer(text):
        if m["lang"] in ("python", "bash"):
            line = text.count("\n", 0, m.start("code")) + 1
            out.append(pytest.param(m["lang"], m["code"], m["why"], id=f"README.md:{line}-{m['lang']}"))
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    (d / "examples").symlink_to(ROOT / "examples")
    return d


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "__readme__"}


def test_every_block_is_checked():
    langs = [p.values[0] for p in blocks()]
    assert langs.count("python") >= 8 and langs.count("bash") >= 2


@pytest.mark.parametrize("lang,code,why", blocks())
def test_readme_block(lang, code, why, workdir, namespace, monkeypatch):
    if why:
        pytest.skip(why)
    monkeypatch.chdir(workdir)
    if lang == "python":
        exec(compile(code, "README.md", "exec"), namespace)
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, f"{code}\n--- stdout\n{res.stdout[-2000:]}\n--- stderr\n{res.stderr[-3000:]}"


def _rerun(workdir, namespace, monkeypatch, pick):
    monkeypatch.chdir(workdir)
    ran = 0
    for p in blocks():
        lang, code, why = p.values
        if lang == "python" and not why and pick(code):
            exec(compile(code, "README.md", "exec"), namespace)
            ran += 1
    return ran


def test_blocks_that_write_can_run_again(workdir, namespace, monkeypatch):
    """A notebook cell is run twice: the blocks that add by id or sync a folder run again, after the whole README
    ran once (this module's order), without an error (the full re-run is the slow test below)."""
    assert _rerun(workdir, namespace, monkeypatch, lambda code: "add_embeddings" in code or "sync_index" in code) == 2


@pytest.mark.slow
def test_every_block_can_run_again(workdir, namespace, monkeypatch):
    """Every Python block, twice over (a third time when the blocks above ran in this session)."""
    for _ in range(2):
        assert _rerun(workdir, namespace, monkeypatch, lambda code: True) >= 8


def test_readme_points_only_at_public_names_and_files_of_the_repository():
    """Readers are sent to public names (no module or attribute whose name starts with "_"; every dotted
    ``colbert_retriever.…`` name resolves) and to files inside the repository (links, ``../`` paths)."""
    import importlib

    text = (ROOT / "README.md").read_text()
    spans = re.findall(r"`([^`\n]+)`", text)
    private = [s for s in spans if re.search(r"(^|[^\w\"'])_[A-Za-z]\w*\.", s) or s.startswith("colbert_retriever._")]
    assert not private, f"private names in the README: {private}"
    for name in {m for s in spans for m in re.findall(r"\bcolbert_retriever(?:\.\w+)+", s)}:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{name} does not resolve"
            obj = getattr(obj, attr)
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).resolve().is_relative_to(ROOT) and (ROOT / target).exists(), target
    assert "../" not in text.replace("http://", "").replace("https://", ""), "a path outside the repository"
