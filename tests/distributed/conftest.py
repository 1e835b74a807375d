"""One local multi-node Ray cluster for the distributed tests (3 nodes, small object stores), two sharded indexes
built on it from one collection (2 shards from a JSONL file, 4 shards from a Ray Dataset), and the collection."""

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
    """ids, texts (titles joined as `colbert-retriever index` joins them), metadata; some texts are longer than
    the tiny model's documents (indexed as passages)."""
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
def built(ray_cluster, tmp_path_factory, jsonl, collection, colbert_ai_ckpt):
    """{2: folder, 4: folder}: the collection as 2 shards (from the JSONL file) and 4 shards (from a Ray
    Dataset with the same fields), lexical side included."""
    import ray.data

    from colbert_retriever import CodecConfig
    from colbert_retriever.distributed import build_sharded

    root = tmp_path_factory.mktemp("sharded")
    common = dict(model=str(colbert_ai_ckpt), dtype="float32", codec_config=CodecConfig(num_centroids=32),
                  lexical=True, num_workers=1, show_progress=False, chunk_docs=64, batch_size=64, sample_documents=64)
    two = build_sharded(root / "two", jsonl, num_shards=2, **common)
    ds = ray.data.from_items([{"id": r["_id"], **{k: v for k, v in r.items() if k != "_id"}} for r in collection])
    four = build_sharded(root / "four", ds, num_shards=4, **common)
    return {2: two, 4: four}


def single_twin(root: Path, path: Path, model, jsonl: Path):
    """One index over the whole collection, built with the sharded index's codec."""
    from colbert_retriever import Index
    from colbert_retriever.distributed import manifest as mf
    from colbert_retriever.evaluation import load_corpus

    m = mf.read(root)
    ids, texts, metas = load_corpus(jsonl)
    return Index.build(path, texts, ids=ids, metadatas=metas, model=model, codec=mf.load_codec(root, m.codec),
                       codec_config=mf.codec_config(m.codec), lexical=True, show_progress=False,
                       pool_factor=1)  # a sharded index is not pooled: the twin must store the same rows
