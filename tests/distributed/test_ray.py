"""Distributed build and sharded search on a local Ray cluster (2 CPUs)."""

import json

import pytest

ray = pytest.importorskip("ray")

from colbert_retriever import CodecConfig, Index  # noqa: E402
from colbert_retriever.codec.residual import ResidualCodec  # noqa: E402
from colbert_retriever.distributed.sharded import ShardedIndex, ShardError, build_sharded  # noqa: E402

from ..conftest import make_corpus  # noqa: E402


@pytest.fixture(scope="module")
def marker(tmp_path_factory):
    return tmp_path_factory.mktemp("marker") / "failed-once"


@pytest.fixture(scope="module")
def cluster(marker):
    """Every Ray worker process runs ``_die_once.install``: the first index write (``os.replace``) in any worker
    kills its process (a worker dying mid-build), later ones run normally. No hook lives in the library."""
    from . import _die_once

    ray.cloudpickle.register_pickle_by_value(_die_once)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"worker_process_setup_hook": _die_once.installer(str(marker))})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(120, seed=21)


@pytest.fixture(scope="module")
def sharded(cluster, marker, corpus, colbert_ai_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded") / "idx"
    build_sharded(root, corpus, ids=[f"d{i}" for i in range(len(corpus))],
                  metadatas=[{"g": i % 3} for i in range(len(corpus))], model=str(colbert_ai_ckpt), num_shards=3,
                  num_workers=2, dtype="float32", codec_config=CodecConfig(num_centroids=32))
    assert marker.exists()  # the first shard's worker died once and the shard was retried
    return root


def test_manifest_complete(sharded, corpus):
    m = json.loads((sharded / "shards.json").read_text())
    assert [s["name"] for s in m["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]
    assert sum(s["documents"] for s in m["shards"]) == len(corpus) == m["counts"]["documents"]
    # the precision policy is resolved once by the driver and written down; every shard was encoded with it
    assert m["model"]["precision"]["documents"] == m["model"]["dtype"] == "float32"
    for s in m["shards"]:
        shard_meta = json.loads((sharded / s["name"] / "metadata.json").read_text())
        assert shard_meta["provenance"]["precision"] == m["model"]["precision"]


def test_sharded_equals_single_index(sharded, corpus, colbert_ai_ckpt, tmp_path, _tiny_model):
    """Same centroids -> same ids and scores as one index over the whole collection."""
    shard0 = Index.open(sharded / "shard-00000", model=_tiny_model)
    codec = shard0._current().arrays.codec
    single = Index.build(tmp_path / "single", corpus, ids=[f"d{i}" for i in range(len(corpus))], model=_tiny_model,
                         codec=ResidualCodec(codec.centroids, codec.bucket_cutoffs, codec.bucket_weights, 2),
                         show_progress=False)
    sh = ShardedIndex.open(sharded, model=_tiny_model)
    try:
        for q in corpus[:5]:
            a = sh.search(q, k=10, exhaustive=True)
            b = single.search(q, k=10, exhaustive=True)
            assert [h.id for h in a] == [h.id for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        many = sh.search(corpus[:2], k=7, filter={"g": 1})
        assert len(many) == 2 and all(len(x) == 7 and all(h.metadata["g"] == 1 for h in x) for x in many)
        assert len(sh) == len(corpus)
        # updates route to shards
        sh.add(["zebra xylophone quartz"], ids=["new"])
        assert len(sh) == len(corpus) + 1
        assert "new" in {h.id for h in sh.search("zebra xylophone quartz", k=len(corpus) + 1)}
        assert sh.delete(["new", "d0", "d119"]) == 3
        assert len(sh) == len(corpus) - 2
        # a dead shard actor is restarted
        ray.kill(sh._actors["shard-00001"])
        assert len(sh.search(corpus[0], k=5)) == 5
    finally:
        sh.close()


def test_dead_shard_clear_error(sharded, _tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    sh = ShardedIndex.open(broken, model=_tiny_model)
    try:
        shutil.rmtree(broken / "shard-00002")
        ray.kill(sh._actors["shard-00002"])
        with pytest.raises(ShardError, match="shard-00002"):
            sh.search("python", k=3)
    finally:
        sh.close()
