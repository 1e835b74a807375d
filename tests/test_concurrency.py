"""The concurrency contract: readers (threads sharing one Index, and other processes) search while a writer runs
add/delete/compact; every answer a reader gets equals the answer of one committed generation, nobody hits a closed
connection or a missing file, and a second writer waits for the lock or fails clearly after its timeout."""

import json
import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

from colbert_retriever import Index, IndexLockedError
from colbert_retriever.store import storage

from .conftest import make_corpus

QUERIES = ("music guitar piano", "ocean forest river", "kernel memory network")


def _answer(index, q):
    return [(h.id, round(h.score, 4)) for h in index.search(q, k=5)]


def _writer_ops(idx):
    """A sequence of writes touching every path; yields after each commit."""
    extra = make_corpus(40, seed=50)
    for i in range(6):
        idx.add(extra[i * 5 : i * 5 + 5], ids=[f"w{i}-{j}" for j in range(5)])
        yield
        idx.delete([f"d{i * 9 + j}" for j in range(3)])
        yield
    idx.compact()
    yield
    idx.add(extra[30:], ids=[f"late{j}" for j in range(10)])
    yield
    idx.compact(recluster=True)
    yield


def _expected_answers(path, model, gens):
    ref = Index.open(path, model=model)
    gens[ref.generation] = {q: _answer(ref, q) for q in QUERIES}
    ref.close()


def _write_and_record(idx, model, pause: float) -> dict:
    """Run the writer's sequence; return each committed generation's answers (computed by a fresh handle)."""
    gens = {}
    _expected_answers(idx.path, model, gens)
    for _ in _writer_ops(idx):
        _expected_answers(idx.path, model, gens)
        time.sleep(pause)
    return gens


def _assert_each_from_a_generation(seen, gens):
    valid = {q: [g[q] for g in gens.values()] for q in QUERIES}
    bad = [(q, a) for q, a in seen if a not in valid[q]]
    assert not bad, f"{len(bad)} answers match no committed generation, e.g. {bad[0]}"


def test_threads_share_one_index_while_it_is_written(built_index, tiny_model):
    idx = built_index
    seen, errors, stop = [], [], threading.Event()

    def reader(n):
        i = 0
        while not stop.is_set():
            q = QUERIES[(n + i) % len(QUERIES)]
            try:
                seen.append((q, _answer(idx, q)))
                len(idx)
            except Exception as e:  # noqa: BLE001 - any error fails the test below
                errors.append(repr(e))
            i += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        gens = _write_and_record(idx, tiny_model, 0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert len(seen) > 30
    _assert_each_from_a_generation(seen, gens)
    assert len({json.dumps(a) for q, a in seen if q == QUERIES[0]}) > 1  # readers did see several generations


def _reader_process(path, ckpt, out_file, stop_file):
    from colbert_retriever import ColBERT

    model = ColBERT.from_pretrained(ckpt, dtype="float32")
    idx = Index.open(path, model=model)
    seen, errors, i = [], [], 0
    _answer(idx, QUERIES[0])
    Path(out_file + ".ready").touch()
    while not Path(stop_file).exists():
        q = QUERIES[i % len(QUERIES)]
        try:
            seen.append((q, _answer(idx, q)))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        i += 1
    Path(out_file).write_text(json.dumps({"seen": seen, "errors": errors}))


def test_processes_search_while_another_process_writes(built_index, tiny_model, colbert_ai_ckpt, tmp_path):
    ctx = mp.get_context("spawn")
    stop = tmp_path / "stop"
    outs = [tmp_path / f"reader{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_reader_process, args=(str(built_index.path), str(colbert_ai_ckpt), str(o), str(stop)))
             for o in outs]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 180
    while not all(Path(str(o) + ".ready").exists() for o in outs):  # readers loaded torch and searched once
        assert time.monotonic() < deadline and all(p.is_alive() for p in procs), "reader processes did not start"
        time.sleep(0.1)
    try:
        gens = _write_and_record(built_index, tiny_model, 0.2)
    finally:
        stop.touch()
        for p in procs:
            p.join(120)
    total = 0
    for o in outs:
        res = json.loads(o.read_text())
        assert not res["errors"], res["errors"][:5]
        seen = [(q, [tuple(h) for h in a]) for q, a in res["seen"]]
        total += len(seen)
        _assert_each_from_a_generation(seen, gens)
    assert total > 20


def test_second_writer_waits_then_fails_clearly(built_index, tiny_model):
    other = Index.open(built_index.path, model=tiny_model, lock_timeout=0.3)
    held = threading.Event()
    release = threading.Event()

    def hold():
        with storage.write_lock(built_index.path):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    with pytest.raises(IndexLockedError, match="another writer holds the index.*lock_timeout"):
        other.delete(["d1"])
    assert 0.25 <= time.monotonic() - t0 < 5
    waiting = Index.open(built_index.path, model=tiny_model, lock_timeout=30)
    threading.Timer(0.5, release.set).start()
    assert waiting.delete(["d1"]) == 1  # waited for the lock, then wrote
    t.join()
    assert len(built_index) == 199


def test_threads_writing_through_one_handle_are_serialised(built_index):
    errors = []

    def add(i):
        try:
            built_index.add([f"thread document {i}"], ids=[f"t{i}"])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(built_index) == 206
