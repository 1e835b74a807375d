"""Upsert, get, ids listing, delete by filter, long-text control and the per-process model cache."""

import json
import logging
import shutil
import sqlite3

import pytest

from colbert_retriever import (
    ColBERT,
    IncompatibleModelError,
    Index,
    InvalidArgument,
    InvalidType,
    Record,
    clear_model_cache,
    load_model,
)

from .conftest import assert_ranked_alike


def test_upsert_get_ids_and_delete_by_filter(built_index, corpus_200):
    idx = built_index
    gen = idx.generation
    assert idx.ids()[:3] == ["d0", "d1", "d2"] and len(idx.ids()) == 200
    assert idx.ids({"group": 1})[:2] == ["d1", "d5"] and len(idx.ids({"group": 1})) == 50
    assert idx.get(["d3", "nope", "d1", "d3"]) == [
        Record("d3", corpus_200[3], {"group": 3, "even": False, "name": "doc3"}),
        Record("d1", corpus_200[1], {"group": 1, "even": False, "name": "doc1"})]
    with pytest.raises(InvalidArgument, match="ids already in the index"):
        idx.add(["new text"], ids=["d3"])
    assert idx.generation == gen  # refused before anything was written
    idx.add(["zebra quartz violin"], ids=["d3"], metadatas=[{"v": 2}], on_conflict="replace")
    assert idx.get("d3") == [Record("d3", "zebra quartz violin", {"v": 2})]
    assert len(idx) == 200 and idx.metadata["counts"]["deleted"] == 1 and idx.generation == gen + 1
    hits = idx.search("zebra quartz violin", k=200, exhaustive=True)
    assert [h.id for h in hits].count("d3") == 1  # the old version is gone
    assert [h.text for h in hits if h.id == "d3"] == ["zebra quartz violin"]
    idx.upsert(["first new", "second new"], ids=["d4", "brand-new"])
    assert len(idx) == 201 and idx.get("brand-new")[0].text == "second new"
    assert idx.delete(filter={"group": 2}) == 50 and len(idx) == 151
    assert idx.delete(["d1", "d5"], filter={"group": 0}) == 0  # both must match
    assert idx.delete(["d1", "d8"], filter={"group": 0}) == 1
    assert idx.ids({"group": 2}) == [] and "d8" not in idx.ids()
    assert all(h.metadata.get("group") != 2 for h in idx.search("a", k=300, exhaustive=True))
    reopened = Index.open(idx.path, model=idx.model)
    assert reopened.ids() == idx.ids() and reopened.get("d3") == idx.get("d3")
    with pytest.raises(InvalidArgument, match="on_conflict"):
        idx.add(["x y"], on_conflict="skip")
    with pytest.raises(InvalidArgument, match="upsert needs ids"):
        idx.upsert(["x y"], ids=None)
    with pytest.raises(InvalidType, match="filter must be a dict"):
        idx.ids(filter="group=1")


def test_truncate_error_and_warning(tmp_path, tiny_model, caplog):
    long = " ".join(["word"] * 100)  # the tiny model keeps 21 document tokens
    with pytest.raises(InvalidArgument, match=r"1 text\(s\) exceed the model's 21 document tokens.*texts\[1\] has 100"):
        Index.build(tmp_path / "i", ["short text", long], model=tiny_model, truncate="error", show_progress=False)
    assert not (tmp_path / "i").exists()
    with pytest.raises(InvalidArgument, match="truncate must be one of"):
        Index.build(tmp_path / "i", ["short text"], model=tiny_model, truncate="cut", show_progress=False)
    with caplog.at_level(logging.WARNING):
        idx = Index.build(tmp_path / "i", ["short text", long], model=tiny_model, truncate="warn",
                          show_progress=False)
    assert any("79 tokens dropped" in r.getMessage() for r in caplog.records)
    chunked = Index.build(tmp_path / "c", ["short text", long], model=tiny_model, show_progress=False)  # default
    assert chunked.metadata["counts"]["live"] > 2 and len(chunked) == 2 and chunked.get(["1"])[0].text == long
    with pytest.raises(InvalidArgument, match="exceed"):
        idx.add([long], truncate="error")
    assert len(idx) == 2
    # the model's own splitter keeps every token: passages fit and cover the text
    passages = tiny_model.split_text(long, overlap=3)
    assert len(passages) > 4 and all(n <= 21 for n in tiny_model.tokenizer.count_tokens(passages))
    assert sum(tiny_model.tokenizer.count_tokens(passages)) >= 100
    idx.add(passages, truncate="error")


def test_model_cache(tmp_path, colbert_ai_ckpt, tiny_model):
    a = load_model(str(colbert_ai_ckpt), dtype="float32")
    assert load_model(colbert_ai_ckpt, dtype="float32") is a  # str or Path, same folder: one instance
    assert ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32") is not a  # explicit loads stay fresh
    assert load_model(a) is a
    idx = Index.build(tmp_path / "i", ["alpha beta", "gamma delta"], model=str(colbert_ai_ckpt), show_progress=False)
    assert idx.model.identity == a.identity
    # an index built with another doc_maxlen: the reopened model is a view sharing the cached weights
    b = load_model(colbert_ai_ckpt, dtype="float32")
    short = b.with_config(b.config.replace(doc_maxlen=12))
    assert short is not b and short.backbone is b.backbone and b.config.doc_maxlen != 12
    Index.build(tmp_path / "j", ["alpha beta"], model=short, show_progress=False)
    opened = Index.open(tmp_path / "j", model=str(colbert_ai_ckpt))
    assert opened.model.config.doc_maxlen == 12 and b.config.doc_maxlen != 12
    with pytest.raises(IncompatibleModelError, match="cannot be loaded"):
        Index.open(tmp_path / "j", model=str(tmp_path / "missing"))
    with pytest.raises(InvalidType, match="model must be"):
        load_model(42)
    clear_model_cache()
    assert load_model(colbert_ai_ckpt, dtype="float32") is not a


def test_chunked_documents(tmp_path, tiny_model, corpus_200):
    # the tiny model keeps 21 document tokens: these texts become several passages each
    long_a = " ".join(corpus_200[:12])
    long_b = " ".join(corpus_200[12:30]) + "\n\nzebra quartz violin ends it."
    texts = [long_a, "short text here.", long_b]
    idx = Index.build(tmp_path / "i", texts, ids=["A", "s", "B"], metadatas=[{"n": 1}, {"n": 2}, {"n": 3}],
                      model=tiny_model, truncate="chunk", show_progress=False,
                      pool_factor=1)  # its best passage's score is checked against unpooled MaxSim (rerank)
    rows = idx.metadata["counts"]["live"]
    assert rows > 10 and len(idx) == 3 and idx.ids() == ["A", "s", "B"]
    # get() gives back each original text exactly
    assert [r.text for r in idx.get(["A", "s", "B"])] == texts
    assert idx.get("B")[0].metadata == {"n": 3}
    # every passage fits the model: nothing was truncated
    passages = [tiny_model.tokenizer.count_tokens([long_b[a:b]])[0] for a, b in tiny_model.passage_spans(long_b)]
    assert max(passages) <= 21
    for exhaustive in (True, False):
        hits = idx.search("zebra quartz violin ends it", k=10, exhaustive=exhaustive)
        assert sorted(h.id for h in hits) == ["A", "B", "s"]  # each document once, k > documents: all of them
        assert hits == sorted(hits, key=lambda h: -h.score)
        b = next(h for h in hits if h.id == "B")
        assert b.passage is not None and b.text in long_b and len(b.text) < len(long_b)
        assert next(h for h in hits if h.id == "s").passage is None
    # the best passage's score is the document's: equal to the best MaxSim over its passages
    spans = tiny_model.passage_spans(long_b)
    best = max(h.score for h in tiny_model.rerank("zebra quartz violin ends it", [long_b[a:c] for a, c in spans]))
    got = idx.search("zebra quartz violin ends it", k=3, exhaustive=True)
    assert next(h.score for h in got if h.id == "B") == pytest.approx(best, rel=0.05)  # compressed vs exact
    # the reranker scores a long text whole, by its best passage (the same passages, the same MaxSim)
    assert tiny_model.rerank("zebra quartz violin ends it", [long_b])[0].score == pytest.approx(best, abs=1e-4)
    assert len(idx.search("zebra", k=2)) == 2
    assert len(idx.search("zebra", k=5, ids=["B"])) == 1
    # upsert replaces every passage; delete removes every passage
    idx.add(["now short."], ids=["B"], on_conflict="replace")  # no metadatas: the replaced one's is kept
    assert idx.get("B")[0].text == "now short." and idx.get("B")[0].metadata == {"n": 3} and len(idx) == 3
    assert idx.delete(["A"]) > 1 and len(idx) == 2 and idx.ids() == ["s", "B"]
    idx.add([long_a], ids=["A2"], truncate="chunk")
    idx.compact()
    assert len(idx) == 3 and idx.get("A2")[0].text == long_a
    assert Index.open(idx.path, model=tiny_model).get("A2")[0].text == long_a


def test_chunk_into_an_index_from_before_passages(_built_index, tmp_path, tiny_model, corpus_200):
    """A store written before the span column existed (here: the column dropped from a copy, as 0.1 wrote it)
    answers without it, and gains it on the first chunked add."""
    path = tmp_path / "index"
    shutil.copytree(_built_index, path)
    store = path / json.loads((path / "metadata.json").read_text())["docstore"]
    conn = sqlite3.connect(store)
    conn.executescript("""
        CREATE TABLE v01 (pid INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL,
                          deleted_gen INTEGER);
        INSERT INTO v01 SELECT pid, id, text, metadata, deleted_gen FROM docs;
        DROP TABLE docs;
        ALTER TABLE v01 RENAME TO docs;
        CREATE INDEX docs_id ON docs(id);""")
    conn.close()
    idx = Index.open(path, model=tiny_model)
    assert not idx.snapshot().docstore.has_spans()
    assert len(idx.search(corpus_200[3], k=5)) == 5 and idx.get("d3")[0].text == corpus_200[3]
    long = " ".join(corpus_200[:15])
    idx.add([long], ids=["long"], truncate="chunk")
    assert idx.snapshot().docstore.has_spans()
    assert len(idx) == 201 and idx.get("long")[0].text == long and idx.metadata["counts"]["live"] > 202
    hits = idx.search(corpus_200[3], k=300, exhaustive=True)
    assert [h.id for h in hits].count("long") == 1 and next(h for h in hits if h.id == "long").passage is not None


def test_reencoding_recluster_equals_a_fresh_build(tmp_path, tiny_model, corpus_200):
    """Growing one document at a time, then re-training by re-encoding, lands where a one-shot build lands; the
    decompressed re-training (no encoder pass) is what big indexes use."""
    idx = Index.build(tmp_path / "grown", corpus_200[:1], ids=["d0"], model=tiny_model, show_progress=False)
    for i in range(1, 40):
        idx.add([corpus_200[i]], ids=[f"d{i}"])
    assert idx.needs_recluster
    idx.compact()  # recluster and reencode chosen automatically (a small index)
    assert not idx.needs_recluster
    fresh = Index.build(tmp_path / "fresh", corpus_200[:40], ids=[f"d{i}" for i in range(40)], model=tiny_model,
                        show_progress=False)
    assert idx.metadata["codec"]["num_centroids"] == fresh.metadata["codec"]["num_centroids"]
    for q in corpus_200[100:105]:
        assert_ranked_alike(idx.search(q, k=10, exhaustive=True), fresh.search(q, k=10, exhaustive=True), 1e-4)
    gen = idx.generation
    idx.compact(recluster=True, reencode=False)
    assert idx.generation == gen + 1 and len(idx) == 40
    with pytest.raises(InvalidType, match="reencode"):
        idx.compact(reencode="yes")


def test_build_over_an_existing_index_upserts(tmp_path, tiny_model, caplog):
    """``Index.build`` on an existing folder (``if_exists="upsert"``): checked against one snapshot, then upserted;
    documents the call does not name stay (with a warning); lexical=True gives the index its BM25 side first."""
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta", "iota kappa"]
    Index.build(tmp_path / "i", texts[:3], ids=["a", "b", "c"], model=tiny_model, show_progress=False).close()
    with pytest.raises(InvalidArgument, match="already exists with nbits="):
        Index.build(tmp_path / "i", texts, model=tiny_model, nbits=4, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="colbert_retriever"):
        idx = Index.build(tmp_path / "i", ["alpha beta changed", "iota kappa"], ids=["a", "d"], model=tiny_model,
                          lexical=True, show_progress=False)
    assert "already holds 2 document(s) this call does not name" in caplog.text
    assert sorted(idx.ids()) == ["a", "b", "c", "d"] and idx.get(["a"])[0].text == "alpha beta changed"
    assert idx.has_lexical and idx.search("kappa", k=1, mode="bm25")[0].id == "d"
