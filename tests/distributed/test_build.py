"""The streaming build: its sources (JSONL, a BEIR folder, Parquet, a Ray Dataset, texts in memory, precomputed
embeddings), a build killed part-way that resumes keeping what its shards committed, and dead workers retried."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from colbert_retriever import CodecConfig, InvalidArgument, SearchConfig
from colbert_retriever.distributed import ShardedIndex, build_sharded
from colbert_retriever.distributed import manifest as mf
from colbert_retriever.evaluation import load_corpus

from ..conftest import make_corpus
from .conftest import arm, disarm

ROOT = Path(__file__).resolve().parents[2]


def _opts(ckpt, **kw):
    return {"model": str(ckpt), "dtype": "float32", "codec_config": CodecConfig(num_centroids=16), "num_workers": 1,
            "show_progress": False, "batch_size": 32, **kw}


def test_manifest_and_sources(built, jsonl, collection, _tiny_model):
    m = json.loads((built[2] / mf.MANIFEST).read_text())
    assert m["format"] == mf.FORMAT and m["generation"] == 1 and len(m["shards"]) == 2
    assert m["counts"]["documents"] == len(collection) and m["lexical"]
    assert m["model"]["precision"]["documents"] == "float32"  # resolved once by the driver, recorded
    assert not (built[2] / mf.BUILD_STATE).exists()
    for s in m["shards"]:  # every shard an ordinary index with the shared codec and the recorded precision
        meta = json.loads((built[2] / s["name"] / "metadata.json").read_text())
        assert meta["generation"] == s["generation"] and meta["provenance"]["precision"] == m["model"]["precision"]
        assert meta["codec"]["num_centroids"] == m["codec"]["num_centroids"]
        assert meta["pooling"] == {"pool_factor": 1}  # sharded indexes are not pooled (README "Token pooling")
    # the JSONL and the Ray Dataset gave the same documents, as `colbert-retriever index` reads them
    ids, texts, metas = load_corpus(jsonl)
    with ShardedIndex.open(built[2], model=_tiny_model) as two, ShardedIndex.open(built[4], model=_tiny_model) as four:
        want = [(i, t, x) for i, t, x in zip(ids, texts, metas)]
        assert [(r.id, r.text, r.metadata) for r in two.get(ids)] == want
        assert [(r.id, r.text, r.metadata) for r in four.get(ids)] == want


def _normalized(data, **kw):
    import ray

    from colbert_retriever.distributed import source

    raw, kind = source.dataset(ray, data, kw.pop("ids", None), kw.pop("metadatas", None), None)
    raw.context.raise_original_map_exception = True
    rows = raw.map_batches(source.Normalize(kind, 3), batch_format="pyarrow").take_all()
    return sorted([(r["id"], r["text"], json.loads(r["metadata"]), r["shard"]) for r in rows])


def test_sources_read_as_the_cli_reads(ray_cluster, tmp_path):
    """A BEIR folder, JSONL (gzipped too), Parquet and texts in memory: the documents `colbert-retriever index`
    reads (title joined, other fields as metadata, rows without text skipped), each routed by its id."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from colbert_retriever.distributed.routing import shard_of

    rows = [{"_id": f"b{i}", "title": "Title" if i % 2 else "", "text": t, "metadata": {}, "year": i}
            for i, t in enumerate(make_corpus(12, seed=3))] + [{"_id": "empty", "text": ""}]
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    ids, texts, metas = load_corpus(beir)
    want = sorted((i, t, m, shard_of(i, 3)) for i, t, m in zip(ids, texts, metas))
    assert _normalized(beir) == want and _normalized(tmp_path / "c.jsonl.gz") == want
    assert len(want) == 12 and want[1][1].startswith("Title. ")
    pq.write_table(pa.table({"id": ["p0", "p1"], "text": ["one", "two"], "year": [2020, None]}), tmp_path / "p.parquet")
    assert _normalized(tmp_path / "p.parquet") == [("p0", "one", {"year": 2020}, shard_of("p0", 3)),
                                                   ("p1", "two", {}, shard_of("p1", 3))]
    assert _normalized(["x", "y"], ids=["a", "b"], metadatas=[{"k": 1}, {}]) == [
        ("a", "x", {"k": 1}, shard_of("a", 3)), ("b", "y", {}, shard_of("b", 3))]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "no id"}) + "\n")
    with pytest.raises(InvalidArgument, match="'_id' \\(or 'id'\\) and 'text'"):
        _normalized(tmp_path / "bad.jsonl")
    (tmp_path / "nan.jsonl").write_text('{"_id": "n", "text": "t", "score": NaN}\n')
    with pytest.raises(InvalidArgument, match="finite|NaN"):
        _normalized(tmp_path / "nan.jsonl")


def test_refuses_a_foreign_folder(ray_cluster, tmp_path, colbert_ai_ckpt):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgument, match="not ours"):
        build_sharded(tmp_path, ["a text"], **_opts(colbert_ai_ckpt))
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt"]


def test_precomputed_embeddings(ray_cluster, tmp_path):
    import ray.data

    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((int(rng.integers(3, 9)), 16)).astype(np.float32) for _ in range(60)]
    ds = ray.data.from_items([{"id": f"e{i}", "embedding": d.tolist(), "text": f"doc {i}", "lang": "xx"}
                              for i, d in enumerate(docs)])
    root = build_sharded(tmp_path / "emb", ds, embeddings_column="embedding", name="random-16", num_shards=3,
                         codec_config=CodecConfig(num_centroids=8), show_progress=False)
    m = mf.read(root)
    assert m.model["kind"] == "embeddings" and m.model["name"] == "random-16"
    with ShardedIndex.open(root) as sh:
        assert len(sh) == 60 and sh.get("e5")[0].metadata == {"lang": "xx"}
        for i in (0, 17, 42):
            top = sh.search_embeddings([__import__("torch").from_numpy(docs[i])], 1,
                                       config=SearchConfig(exhaustive=True))[0][0]
            assert top.id == f"e{i}" and top.text == f"doc {i}"
        with pytest.raises(InvalidArgument, match="search_embeddings"):
            sh.search("text query")
        sh.add_embeddings([rng.standard_normal((4, 16)).astype(np.float32)], ids=["new"])
        assert len(sh) == 61
    bad = ray.data.from_items([{"id": "x", "embedding": [[1.0, 2.0], [float("nan"), 0.0]]}])
    with pytest.raises(InvalidArgument, match="document 'x'"):
        build_sharded(tmp_path / "bad", bad, embeddings_column="embedding", show_progress=False)


def test_killed_build_resumes_keeping_committed_documents(ray_cluster, tmp_path, jsonl, collection, colbert_ai_ckpt,
                                                          _tiny_model):
    """The driver dies (no cleanup at all) after its writers committed 3 chunks; the same call again finishes the
    build: the codec is reused, committed documents are kept and not encoded again, none is stored twice."""
    root = tmp_path / "resumed"
    script = textwrap.dedent(f"""
        import os, sys, ray
        from colbert_retriever import CodecConfig
        from colbert_retriever.distributed import build_sharded
        ray.init(address={ray_cluster.address!r}, log_to_driver=False)
        real_wait, acks = ray.wait, [0]
        def wait(*args, **kwargs):  # the driver dies right after its writers' third commit
            out = real_wait(*args, **kwargs)
            if sys._getframe(1).f_globals.get("__name__") == "colbert_retriever.distributed.build":
                acks[0] += 1
                if acks[0] == 3:
                    os._exit(9)
            return out
        ray.wait = wait
        build_sharded({str(root)!r}, {str(jsonl)!r}, model={str(colbert_ai_ckpt)!r}, dtype="float32",
                      codec_config=CodecConfig(num_centroids=16), num_shards=3, num_workers=1, chunk_docs=10,
                      batch_size=32, show_progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert (root / mf.BUILD_STATE).exists() and not (root / mf.MANIFEST).exists()
    state = json.loads((root / mf.BUILD_STATE).read_text())
    build_sharded(root, jsonl, **_opts(colbert_ai_ckpt, codec_config=None))
    m = mf.read(root)
    assert m.codec == state["codec"] and not (root / mf.BUILD_STATE).exists()
    written = m.provenance["documents_written"]
    assert 30 <= len(collection) - written < len(collection)  # at least the 3 committed chunks were kept
    with ShardedIndex.open(root, model=_tiny_model) as sh:
        ids = sh.ids()
        assert len(sh) == len(collection) and sorted(ids) == sorted(r["_id"] for r in collection)
        assert len(ids) == len(set(ids))
    build_sharded(root, jsonl, **_opts(colbert_ai_ckpt, codec_config=None))  # the same data again: an upsert
    again = mf.read(root)
    assert again.generation == m.generation and again.generations() == m.generations()  # nothing written


def test_dead_workers_are_retried(ray_cluster, tmp_path, colbert_ai_ckpt, _tiny_model):
    """A shard writer killed in its first index write and an encoder killed on its first batch: Ray restarts
    them, the chunk and the block run again, and the build is complete, each document once."""
    texts = make_corpus(50, seed=8)
    arm(ray_cluster.die_once, "replace", "encode")
    try:
        root = build_sharded(tmp_path / "idx", texts, num_shards=2, chunk_docs=10, sample_documents=10,
                             **_opts(colbert_ai_ckpt))
    finally:
        died = disarm(ray_cluster.die_once, "replace", "encode")
    assert died == ["replace", "encode"], f"only {died} died: the test did not test everything"
    with ShardedIndex.open(root, model=_tiny_model) as sh:
        assert len(sh) == 50 and sorted(sh.ids(), key=int) == [str(i) for i in range(50)]
