"""Faults on the 3-node cluster: shard actors killed during a stream of searches, a node lost with the shards it
held, a shard that cannot answer (named, never dropped). A dead build worker: test_build.py."""

import os
import shutil
import signal
import threading
import time

import pytest

from colbert_retriever.distributed import ShardedIndex, ShardError
from colbert_retriever.distributed.routing import shard_name

from ..conftest import assert_ranked_alike, make_corpus

QUERIES = make_corpus(12, seed=77, min_words=2, max_words=6)


@pytest.fixture
def sharded(built, _tiny_model, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built[4], root)
    sh = ShardedIndex.open(root, model=_tiny_model, max_restarts=4)
    yield sh
    sh.close()


def _answers(sh, mode):
    return [[(h.id, h.score, h.text) for h in hits] for hits in sh.search(QUERIES, k=10, mode=mode, depth=50)]


def _alike(got, want) -> bool:
    """The same answers up to float rounding: a restarted shard's first searches run the torch twins while its
    numba kernels compile (scores equal up to last bits), so ties may swap; a missing or extra hit, a wrong text or
    a score off by more than 1e-3 is a difference."""
    if len(got) != len(want):
        return False
    try:
        for g, w in zip(got, want):
            assert_ranked_alike([(i, sc) for i, sc, _ in g], [(i, sc) for i, sc, _ in w], 1e-3)
            texts = {i: t for i, _, t in w}
            assert all(texts.get(i, t) == t for i, _, t in g)
    except AssertionError:
        return False
    return True


def _stream(sh, reference, rounds, stop, failures, done):
    """Search every query in every mode, round after round, comparing each answer with the reference."""
    n = 0
    while n < rounds or not stop.is_set():
        for mode, want in reference.items():
            try:
                got = _answers(sh, mode)
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(repr(e))
                return
            if not _alike(got, want):
                failures.append(f"{mode}: an incomplete or different answer")
        n += 1
        done.append(n)


def _kill(sh, name) -> int:
    import ray

    pid = ray.get(sh._actors[name].pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def test_shard_actors_killed_during_searches(sharded):
    import ray

    reference = {mode: _answers(sharded, mode) for mode in ("colbert", "hybrid")}
    stop, failures, done = threading.Event(), [], []
    t = threading.Thread(target=_stream, args=(sharded, reference, 2, stop, failures, done))
    t.start()
    killed = []
    for name in (shard_name(1), shard_name(3)):
        while not done and t.is_alive():
            time.sleep(0.05)
        killed.append((name, _kill(sharded, name)))
        time.sleep(0.5)
    stop.set()
    t.join(timeout=300)
    assert not t.is_alive() and not failures, failures
    assert len(done) >= 2
    for name, pid in killed:  # restarted: another process answers now
        assert ray.get(sharded._actors[name].pid.remote()) != pid
    assert _answers(sharded, "bm25_rerank") and len(sharded) == len(sharded.ids())


@pytest.mark.slow
def test_a_node_lost_with_its_shards(sharded, ray_cluster):
    import ray

    reference = _answers(sharded, "colbert")
    nodes = {n: ray.get(a.node.remote()) for n, a in sharded._actors.items()}
    workers = {w.node_id: w for w in ray_cluster.cluster.worker_nodes}
    lost = next((nid for nid in nodes.values() if nid in workers), None)
    if lost is None:
        pytest.fail(f"no shard actor on a worker node: {nodes}")
    ray_cluster.cluster.remove_node(workers[lost])
    try:
        assert _alike(_answers(sharded, "colbert"), reference)  # its shards restarted on the nodes left
        moved = {n: ray.get(a.node.remote()) for n, a in sharded._actors.items()}
        assert lost not in moved.values()
    finally:
        ray_cluster.cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)
        ray_cluster.cluster.wait_for_nodes()


def test_a_shard_that_cannot_answer_is_named(built, _tiny_model, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(built[2], root)
    with ShardedIndex.open(root, model=_tiny_model, max_restarts=1) as sh:
        assert len(sh.search("python", k=3)) == 3
        shutil.rmtree(root / shard_name(1))
        _kill(sh, shard_name(1))
        with pytest.raises(ShardError, match=shard_name(1)):
            sh.search("python", k=3)
        with pytest.raises(ShardError, match=shard_name(1)):
            len(sh)
