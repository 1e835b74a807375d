"""BM25 with statistics summed over shards (``store.lexical_stats``) equals one store's BM25 (no Ray needed)."""

import random

import pytest

from colbert_retriever import CodecConfig, Index
from colbert_retriever.store import lexical_stats

from ..conftest import make_corpus
from ._ranking import assert_same_ranking

QUERIES = ["python kernel memory", "river ocean forest gamma", "doctor hospital virus", "music_guitar piano",
           "the of and", "tokyo", "planet star galaxy comet physics"]


def _docs(n=160):
    rng = random.Random(3)
    texts = make_corpus(n, seed=31, min_words=3, max_words=30)
    texts = [t.replace("guitar", "music_guitar") if rng.random() < 0.2 else t for t in texts]  # two-token phrases
    return [f"d{i}" for i in range(n)], texts, [{"g": i % 3} for i in range(n)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, _tiny_model):
    ids, texts, metas = _docs()
    root = tmp_path_factory.mktemp("bm25")
    cfg = CodecConfig(num_centroids=16)
    single = Index.build(root / "single", texts, ids=ids, metadatas=metas, model=_tiny_model, codec_config=cfg,
                         lexical=True, show_progress=False)
    parts = []
    for s in range(3):
        pick = [i for i in range(len(ids)) if i % 3 == s]
        parts.append(Index.build(root / f"part{s}", [texts[i] for i in pick], ids=[ids[i] for i in pick],
                                 metadatas=[metas[i] for i in pick], model=_tiny_model, codec_config=cfg,
                                 lexical=True, show_progress=False))
    single.delete(["d5", "d7"])  # deleted rows still count in the statistics until compaction, in both
    parts[2].delete(["d5"])
    parts[1].delete(["d7"])
    return single, parts


def _own(index, query, limit=50, where=None, ids=None):
    snap = index.snapshot()
    n, gen = snap.meta.counts.documents, snap.meta.generation
    terms = lexical_stats.collect(snap.docstore, query, n)
    return terms, snap, n, gen


@pytest.mark.parametrize("query", QUERIES)
def test_own_statistics_reproduce_fts5(stores, query):
    single, _ = stores
    terms, snap, n, gen = _own(single, query)
    mine = lexical_stats.top_documents(snap.docstore, lexical_stats.score(terms, *terms.statistics()), 50, n, gen)
    ref = snap.docstore.bm25(query, 50, n, gen)
    assert_same_ranking(mine, ref, tol=1e-12, what=query)
    if query != "the of and":
        assert ref, "the query should match something"


@pytest.mark.parametrize("query", QUERIES)
def test_summed_statistics_equal_one_store(stores, query):
    single, parts = stores
    snap = single.snapshot()
    ref = single.search(query, k=40, mode="bm25")
    collected = [_own(p, query) for p in parts]
    rows = sum(t.rows for t, *_ in collected)
    tokens = sum(t.tokens for t, *_ in collected)
    hits = [sum(h) for h in zip(*(t.hits for t, *_ in collected))] if collected[0][0].phrases else []
    if terms_phrases := collected[0][0].phrases:
        assert terms_phrases == lexical_stats.phrases(query)
        assert rows == snap.meta.counts.documents  # deleted rows included
    merged = []
    for terms, psnap, n, gen in collected:
        top = lexical_stats.top_documents(psnap.docstore, lexical_stats.score(terms, rows, tokens, hits), 40, n, gen,
                                          where=None)
        docs = psnap.docstore.doc_ids([p for p, _ in top])
        merged += [(docs[p], s) for p, s in top]
    merged.sort(key=lambda x: -x[1])
    assert_same_ranking([(h.id, h.score) for h in ref], merged[:40], tol=1e-12, what=query)


def test_filters_and_ids_apply_before_the_cut(stores):
    from colbert_retriever.store.filters import compile_filter

    single, _ = stores
    terms, snap, n, gen = _own(single, "python kernel memory")
    scores = lexical_stats.score(terms, *terms.statistics())
    where = compile_filter({"g": 1})
    mine = lexical_stats.top_documents(snap.docstore, scores, 5, n, gen, where=where, ids=None)
    ref = snap.docstore.bm25("python kernel memory", 5, n, gen, where)
    assert_same_ranking(mine, ref, tol=1e-12)
    only = ["d1", "d4", "d10", "nope"]
    assert_same_ranking(lexical_stats.top_documents(snap.docstore, scores, 5, n, gen, ids=only),
                        snap.docstore.bm25("python kernel memory", 5, n, gen, None, only), tol=1e-12)
    assert lexical_stats.top_documents(snap.docstore, scores, 5, n, gen, ids=[]) == []


def test_varints():
    assert lexical_stats.varints(bytes([0x05, 0x81, 0x00, 0x7F])) == [5, 128, 127]
    assert lexical_stats.phrases("The Python, and the KERNEL python!") == ["python", "kernel"]
    assert lexical_stats.phrases("the of") == []
