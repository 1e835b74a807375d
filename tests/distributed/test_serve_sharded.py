"""A sharded index served over HTTP on the cluster: the same answers as the ShardedIndex, writes routed."""

import shutil

import pytest

from colbert_retriever.distributed import ShardedIndex
from colbert_retriever.serve import RemoteIndex

from ..conftest import make_corpus
from ..serve.test_serve import free_port
from ._ranking import assert_same_ranking

pytest.importorskip("ray.serve")


@pytest.mark.slow  # the default run serves an index over HTTP (tests/serve) and shards through the backend
def test_serve_a_sharded_index(built, _tiny_model, tmp_path):
    from colbert_retriever.serve import start, stop

    root = tmp_path / "served"
    shutil.copytree(built[2], root)
    url = start(root, port=free_port(), model=None)
    try:
        remote = RemoteIndex(url)
        health = remote.health()
        assert health["kind"] == "sharded" and health["lexical"]
        with ShardedIndex.open(root, model=_tiny_model) as sh:
            assert health["documents"] == len(sh)
            for q in make_corpus(4, seed=5, min_words=2, max_words=5):
                for mode in ("colbert", "hybrid"):
                    got, want = remote.search(q, k=6, mode=mode, depth=300), sh.search(q, k=6, mode=mode, depth=300)
                    assert_same_ranking([(h.id, h.score) for h in got], [(h.id, h.score) for h in want], tol=1e-4)
            remote.upsert(["served and routed"], ids=["srv-1"])
            assert sh.get("srv-1")[0].text == "served and routed" and len(sh) == health["documents"] + 1
    finally:
        stop(None)
