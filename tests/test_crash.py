"""SIGKILL at every storage event of every write path (build over an existing index, add, delete, compact with and
without re-clustering), on an index with its lexical (BM25) side: the folder must open as the previous or the new
generation with identical answers, and the
next writer must remove what the killed one left, touching nothing that is not ours.

Children are forked from a forkserver that imported torch and the library once, so a kill costs well under a
second. The default run kills at a spread of points per path; ``-m slow`` kills at every point.
"""

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from colbert_retriever import Index
from colbert_retriever.store import layout

from .conftest import make_corpus, read_only_command

OPS = ["build", "add", "upsert", "delete", "compact", "compact_recluster"]
QUERIES = ("music guitar piano", "ocean forest", "kernel memory", "zebra quartz")


def _child(path: str, ckpt: str, op: str, kill_at, counter_file: str) -> None:
    """Run ``op`` on the index at ``path``; SIGKILL ourselves just before storage event number ``kill_at``
    (1-based; 0 = never; "commit": just before metadata.json is replaced), counting events into
    ``counter_file``."""

    import sqlite3

    from colbert_retriever import ColBERT

    model = ColBERT.from_pretrained(ckpt, dtype="float32")
    count = [0]

    def event():
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn):
        def inner(*a, **k):
            if kill_at == "commit" and fn is real_replace and str(a[1]).endswith("metadata.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            event()
            return fn(*a, **k)
        return inner

    real_replace = os.replace

    for name in ("replace", "rename", "unlink", "fsync"):
        setattr(os, name, wrap(getattr(os, name)))

    class Counting(sqlite3.Connection):  # every write transaction of the document store is an event too
        def execute(self, sql, *args):
            if sql.lstrip().upper().startswith("BEGIN IMMEDIATE"):
                event()
            return super().execute(sql, *args)

        def executescript(self, script):
            if script.lstrip().upper().startswith("BEGIN IMMEDIATE"):
                event()
            return super().executescript(script)

    real_connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: real_connect(*a, factory=Counting, **k)
    texts = make_corpus(60, seed=31)
    if op == "build":
        Index.build(path, texts, ids=[f"b{i}" for i in range(60)], model=model, if_exists="overwrite",
                    show_progress=False, lexical=True)
    else:
        idx = Index.open(path, model=model)
        if op == "add":
            idx.add(["zebra quartz xylophone"] + texts[:20], ids=[f"a{i}" for i in range(21)])
        elif op == "upsert":  # replaces live documents (their ids) and adds new ones, in one commit
            idx.upsert(["zebra quartz xylophone"] + texts[:20], ids=["d5", "d6", *[f"u{i}" for i in range(19)]])
        elif op == "delete":
            idx.delete([f"d{i}" for i in range(0, 200, 7)])
        else:
            idx.compact(recluster=op == "compact_recluster")
    Path(counter_file).write_text(str(count[0]))


@pytest.fixture(scope="module")
def forkserver():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "transformers.models.bert.modeling_bert",
                                "transformers.models.bert.tokenization_bert", "colbert_retriever.index",
                                "tests.test_crash"])
    return ctx


def _run(ctx, path, ckpt, op, kill_at, tmp):
    counter = Path(tmp) / f"count-{op}-{kill_at}"
    p = ctx.Process(target=_child, args=(str(path), str(ckpt), op, kill_at, str(counter)))
    p.start()
    p.join(120)
    assert p.exitcode is not None, "child hung"
    return p.exitcode, (int(counter.read_text()) if counter.exists() else None)


def _answers(path, model):
    """ColBERT answers, the lexical side's top 10 with their BM25 scores and every matching document, and hybrid
    answers: all must be those of one committed generation (uncommitted rows never reach BM25 statistics)."""
    with Index.open(path, model=model) as idx:
        out = [[(h.id, round(h.score, 4)) for h in idx.search(q, k=8)] for q in QUERIES]
        out += [[(h.id, round(h.score, 4)) for h in idx.search(q, k=10, mode="bm25")] for q in QUERIES]
        out += [sorted(h.id for h in idx.search(q, k=1000, mode="bm25")) for q in QUERIES]
        out += [[(h.id, round(h.score, 4)) for h in idx.search(q, k=8, mode="hybrid")] for q in QUERIES]
        return out, len(idx)


def _copy(src, dst):
    # SQLite's side files belong to a connection; every commit checkpoints the log into the main file
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*-wal", "*-shm"))


def _assert_clean(path: Path):
    """Only metadata.json, .lock and the files the committed generation references remain (plus foreign files)."""
    meta = layout.read_metadata_file(path)
    own = {p.name for p in path.iterdir() if layout.is_own_file(p.name)}
    assert own - {"metadata.json", ".lock"} <= meta.referenced_files() | {
        f"{meta.docstore}-wal", f"{meta.docstore}-shm"}, own - meta.referenced_files()


def _kill_points(total: int, every: bool) -> list[int]:
    if every:
        return list(range(1, total + 1))
    n = min(total, 7)
    return sorted({1 + round(i * (total - 1) / max(1, n - 1)) for i in range(n)})


def _sweep(op, every, forkserver, _built_index, colbert_ai_ckpt, tiny_model, tmp_path):
    base = tmp_path / "base"
    _copy(_built_index, base)
    with Index.open(base, model=tiny_model) as idx:  # two segments and deleted documents: real work to compact
        idx.add(make_corpus(5, seed=40), ids=[f"p{i}" for i in range(5)])
        idx.delete(["d2", "d3", "p1"])
        idx.add_lexical()
        assert len(idx.metadata["segments"]) == 2
    (base / "user-notes.txt").write_text("not ours")
    old = _answers(base, tiny_model)
    full = tmp_path / "full"
    _copy(base, full)
    code, total = _run(forkserver, full, colbert_ai_ckpt, op, 0, tmp_path)
    assert code == 0 and total and total > 3
    new = _answers(full, tiny_model)
    assert new != old or op == "compact"  # compact keeps the answers; the generation and files change
    assert layout.read_metadata_file(full).generation > layout.read_metadata_file(base).generation
    for kill_at in _kill_points(total, every):
        work = tmp_path / f"k{kill_at}"
        _copy(base, work)
        code, _ = _run(forkserver, work, colbert_ai_ckpt, op, kill_at, tmp_path)
        assert code == -signal.SIGKILL, f"{op}: event {kill_at} of {total} did not kill"
        got = _answers(work, tiny_model)
        assert got in (old, new), f"{op} killed at event {kill_at}/{total}: answers of neither generation"
        # the next writer cleans up after the dead one, and works
        idx = Index.open(work, model=tiny_model)
        idx.delete(["no-such-id"])
        _assert_clean(work)
        assert (work / "user-notes.txt").read_text() == "not ours"
        idx.add(["after the crash"], ids=["ok"])
        assert idx.search("after the crash", k=1, ids=["ok"])[0].id == "ok"
        shutil.rmtree(work)
    return total


@pytest.mark.parametrize("op", OPS)
def test_sigkill_at_spread_points(op, forkserver, _built_index, colbert_ai_ckpt, tiny_model, tmp_path):
    _sweep(op, False, forkserver, _built_index, colbert_ai_ckpt, tiny_model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_sigkill_at_every_point(op, forkserver, _built_index, colbert_ai_ckpt, tiny_model, tmp_path):
    total = _sweep(op, True, forkserver, _built_index, colbert_ai_ckpt, tiny_model, tmp_path)
    print(f"\n{op}: SIGKILL at each of its {total} write events, every one recovered")  # the counts (-s)


def test_repeated_crashes_leave_nothing_behind(forkserver, _built_index, colbert_ai_ckpt, tiny_model, tmp_path):
    work = tmp_path / "idx"
    _copy(_built_index, work)
    Index.open(work, model=tiny_model).add_lexical()
    before = _answers(work, tiny_model)
    for i, op in enumerate(["compact_recluster", "add", "compact", "build", "compact_recluster", "add"]):
        code, _ = _run(forkserver, work, colbert_ai_ckpt, op, 6 + 2 * i, tmp_path)
        assert code == -signal.SIGKILL
    assert _answers(work, tiny_model) == before
    Index.open(work, model=tiny_model).delete(["no-such-id"])
    _assert_clean(work)


READ_ONLY_ANSWERS = """
import json, sys
sys.path.insert(0, {root!r})
from tests.test_crash import _answers
from colbert_retriever import ColBERT
print(json.dumps(_answers({path!r}, ColBERT.from_pretrained({ckpt!r}, dtype="float32"))))
"""


@pytest.mark.parametrize("op", ["add", "upsert"])
def test_writer_killed_before_its_commit_changes_no_bm25_score(op, forkserver, _built_index, colbert_ai_ckpt,
                                                               tiny_model, tmp_path):
    """A writer killed just before replacing metadata.json has committed its rows to the document store: BM25
    (and hybrid) answers and scores stay those of the committed generation, here and in a read-only copy that
    no writer will ever clean up; the next writer rolls the rows back and works."""
    work = tmp_path / "idx"
    _copy(_built_index, work)
    Index.open(work, model=tiny_model).add_lexical()
    before = _answers(work, tiny_model)
    code, _ = _run(forkserver, work, colbert_ai_ckpt, op, "commit", tmp_path)
    assert code == -signal.SIGKILL
    assert _answers(work, tiny_model) == before
    ro = tmp_path / "ro"
    _copy(work, ro)
    script = tmp_path / "ro.py"
    script.write_text(READ_ONLY_ANSWERS.format(root=str(Path(__file__).resolve().parents[1]), path=str(ro),
                                               ckpt=str(colbert_ai_ckpt)))
    cmd = read_only_command(ro, [sys.executable, str(script)])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert [[tuple(h) if isinstance(h, list) else h for h in a] for a in got[0]] == before[0]
        assert got[1] == before[1]
    finally:
        for p in [ro, *ro.iterdir()]:
            os.chmod(p, 0o755)
    idx = Index.open(work, model=tiny_model)
    idx.add(["after the crash"], ids=["ok"])
    assert [h.id for h in idx.search("after crash", k=1, mode="bm25")] == ["ok"]
