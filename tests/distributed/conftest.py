"""One local multi-node Ray cluster for the distributed tests (3 nodes, small object stores), two sharded indexes
built on it from one collection's token embeddings (2 shards from a JSONL file, 4 shards from a Ray Dataset), the
collection, and a single index that stores the same rows as a sharded one."""

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from ..conftest import make_corpus

OBJECT_STORE = 80 * 1024 * 1024
N_DOCS = 240


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory):
    """A head node and two worker nodes; every worker process runs ``_die_once``'s hook (inert until a test arms
    it). Torn down after the last test of this folder."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    from . import _die_once

    folder = tmp_path_factory.mktemp("die-once")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": OBJECT_STORE,
                                                            "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    ray.cloudpickle.register_pickle_by_value(_die_once)
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": _die_once.installer(str(folder))})
    yield SimpleNamespace(cluster=cluster, address=cluster.address, die_once=folder)
    ray.shutdown()
    cluster.shutdown()


def arm(folder: Path, *kinds: str) -> None:
    """The next event of each kind ("replace": an index write; "encode": an encoder's batch) kills its worker."""
    for k in kinds:
        (folder / f"died-{k}").unlink(missing_ok=True)
    (folder / "armed").write_text(" ".join(kinds))


def disarm(folder: Path, *kinds: str) -> list:
    """Disarm; the kinds whose worker died."""
    (folder / "armed").unlink(missing_ok=True)
    return [k for k in kinds if (folder / f"died-{k}").exists()]


@pytest.fixture(scope="package")
def collection():
    """Rows of the JSONL file: ``_id``, ``text``, ``title`` (3 in 10), metadata fields ``g`` and ``name``; some
    texts are longer than the tiny model's documents."""
    rng = random.Random(5)
    texts = make_corpus(N_DOCS, seed=41, min_words=3, max_words=40)
    rows = []
    for i, t in enumerate(texts):
        row = {"_id": f"d{i}", "text": t, "g": i % 3, "name": f"doc {i}"}
        if rng.random() < 0.3:
            row["title"] = " ".join(t.split()[:2]).title()
        rows.append(row)
    return rows


@pytest.fixture(scope="package")
def jsonl(tmp_path_factory, collection):
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in collection))
    return path


@pytest.fixture(scope="package")
def embedded(jsonl, _tiny_model):
    """The collection as ``load_corpus`` reads the JSONL file (ids, texts with titles joined, metadatas) and its
    token embeddings: one (tokens, dim) float32 array per document, encoded once here (texts past the tiny
    model's length truncated)."""
    from colbert_retriever.evaluation import load_corpus

    ids, texts, metas = load_corpus(jsonl)
    return ids, texts, metas, [e.numpy() for e in _tiny_model.encode_documents(texts)]


@pytest.fixture(scope="package")
def built(ray_cluster, tmp_path_factory, collection, embedded, colbert_ai_ckpt):
    """{2: folder, 4: folder}: the collection as 2 shards (from a JSONL file) and 4 shards (from a Ray Dataset
    with the same fields), lexical side included, each document with its ``embedded`` embeddings (an
    ``embedding`` field) and the tiny model recorded, so text searches and writes encode with it. Built from
    embeddings so that a single index of the same embeddings stores the same rows (``twin``): encoded in the
    shards' batches and again in one index's, the texts would give embeddings that differ in last bits (batch
    shapes and thread counts change float sums), and a last bit can move a residual across a bucket cutoff,
    which failed the exact-merge tests about one run in three. The text path of ``build_sharded`` is
    test_build's."""
    import ray.data

    from colbert_retriever import CodecConfig
    from colbert_retriever.distributed import build_sharded

    root = tmp_path_factory.mktemp("sharded")
    rows = [{"_id": r["_id"], "embedding": e.tolist(), **{k: v for k, v in r.items() if k != "_id"}}
            for r, e in zip(collection, embedded[3])]
    path = root / "with-embeddings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(model=str(colbert_ai_ckpt), dtype="float32", codec_config=CodecConfig(num_centroids=32),
                  lexical=True, num_workers=1, show_progress=False, chunk_docs=64, sample_documents=64,
                  embeddings_column="embedding")
    two = build_sharded(root / "two", path, num_shards=2, **common)
    ds = ray.data.from_items([{"id": r.pop("_id"), **r} for r in rows])
    four = build_sharded(root / "four", ds, num_shards=4, **common)
    return {2: two, 4: four}


def twin(root: Path, path: Path, model, embedded):
    """One index of the sharded index's embeddings with its codec: the rows the shards store."""
    from colbert_retriever import Index
    from colbert_retriever.distributed import manifest as mf

    ids, texts, metas, embs = embedded
    m = mf.read(root)
    return Index.build_from_embeddings(path, embs, ids, metas, texts, model=model, codec=mf.load_codec(root, m.codec),
                                       codec_config=mf.codec_config(m.codec), lexical=True, show_progress=False,
                                       pool_factor=1)  # a sharded index is not pooled
