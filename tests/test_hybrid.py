"""The lexical (BM25) side and hybrid search: modes, fusion, filters, updates, passages."""

import pytest

from colbert_retriever import Index, InvalidArgument, InvalidType

from .conftest import assert_ranked_alike

TEXTS = {
    "paris": "Paris is the capital and largest city of France.",
    "berlin": "Berlin is the capital of Germany.",
    "violin": "The violin is a string instrument played with a bow.",
    "piano": "A piano has 88 keys.",
    "json": "json.loads parses a JSON string into Python objects.",
    "colbert": "ColBERT scores documents with late interaction over token embeddings.",
    "zebra": "Zebras have black and white stripes.",
    "ocean": "The Pacific is the largest ocean on Earth.",
}


@pytest.fixture
def idx(tmp_path, tiny_model):
    # unpooled: the hybrid answers asserted here need the random tiny model's exact token matches, which pooling by 2
    # blurs (its token vectors have no similar neighbours, so each pooled row is the mean of unrelated ones)
    return Index.build(tmp_path / "i", list(TEXTS.values()), ids=list(TEXTS), model=tiny_model, lexical=True,
                       metadatas=[{"n": i, "group": i % 2} for i in range(len(TEXTS))], show_progress=False,
                       pool_factor=1)


def test_modes_return_k_unique_hits_with_filters(idx):
    assert idx.has_lexical
    bm = idx.search("capital of Germany city", k=3, mode="bm25")
    assert bm[0].id == "berlin" and {h.id for h in bm} == {"berlin", "paris"}  # only documents with a query word
    assert bm[0].score > bm[1].score > 0
    for mode in ("colbert", "hybrid", "bm25_rerank"):
        for fusion in ("rrf", "normalized"):
            hits = idx.search("capital city of Germany", k=5, mode=mode, fusion=fusion)
            assert len({h.id for h in hits}) == len(hits) and [h.rank for h in hits] == list(range(1, len(hits) + 1))
            assert hits == sorted(hits, key=lambda h: -h.score)
            if mode != "bm25_rerank":
                assert len(hits) == 5
    # hybrid = reciprocal-rank fusion of the two sides' rankings (or min-max normalised scores), weighted alpha
    # for ColBERT and 1 - alpha for BM25, summed
    q = "capital of Germany"
    dense, lex = idx.search(q, k=100), idx.search(q, k=100, mode="bm25")
    for alpha in (0.5, 0.8):
        rrf, norm = {}, {}
        for side, w in ((dense, alpha), (lex, 1 - alpha)):
            lo, hi = min(h.score for h in side), max(h.score for h in side)
            for h in side:
                rrf[h.id] = rrf.get(h.id, 0.0) + w / (60 + h.rank)
                norm[h.id] = norm.get(h.id, 0.0) + w * (h.score - lo) / (hi - lo)
        hybrid = idx.search(q, k=4, mode="hybrid", fusion="rrf", alpha=alpha)  # equal sums are ties in any order
        assert_ranked_alike(hybrid, sorted(rrf.items(), key=lambda x: -x[1])[:4], 1e-9)
        normalized = idx.search(q, k=4, mode="hybrid", fusion="normalized", alpha=alpha)
        assert [h.score for h in normalized] == pytest.approx(sorted(norm.values(), reverse=True)[:4])
        assert all(0.0 <= h.relevance <= 1.0 for h in hybrid + normalized)
    assert idx.search(q, k=4, mode="hybrid") == idx.search(q, k=4, mode="hybrid", fusion="normalized")  # default
    assert idx.search(q, k=1, mode="bm25")[0].relevance == 1.0  # BM25 relevance: relative to the best hit
    with pytest.raises(InvalidArgument, match="alpha"):
        idx.search(q, k=4, mode="hybrid", alpha=1.5)
    # bm25_rerank re-scores BM25's candidates with exact MaxSim: the scores are the ColBERT exhaustive scores
    exact = {h.id: h.score for h in idx.search("capital of Germany", k=8, exhaustive=True)}
    for h in idx.search("capital of Germany", k=2, mode="bm25_rerank"):
        assert h.score == pytest.approx(exact[h.id], abs=1e-4)
    # filters and ids apply to both sides before fusion: still k hits, all matching
    for mode in ("hybrid", "bm25"):
        hits = idx.search("capital city of Germany", k=3, mode=mode, filter={"group": 0})
        assert all(h.metadata["group"] == 0 for h in hits)
        if mode == "hybrid":
            assert len(hits) == 3
        assert [h.id for h in idx.search("capital", k=5, mode=mode, ids=["paris", "piano"])][:1] == ["paris"]
    assert len(idx.search("capital", k=100, mode="hybrid")) == len(TEXTS)  # k > collection: all documents
    assert idx.search("the of and", k=3, mode="bm25") == []  # stopwords only: no lexical match
    assert len(idx.search("the of and", k=3, mode="hybrid")) == 3  # ColBERT still answers
    many = idx.search(["violin bow", "piano keys"], k=2, mode="hybrid")
    assert [m[0].id for m in many] == ["violin", "piano"]


def test_lexical_side_follows_updates(idx):
    idx.add(["Madrid is the capital of Spain."], ids=["madrid"])
    assert "madrid" in [h.id for h in idx.search("Spain", k=3, mode="bm25")]
    idx.upsert(["Lisbon lies on the Atlantic coast."], ids=["madrid"])
    assert idx.search("Spain", k=3, mode="bm25") == []
    assert [h.id for h in idx.search("Atlantic", k=3, mode="bm25")] == ["madrid"]
    idx.delete(filter={"group": 1})
    assert "berlin" not in [h.id for h in idx.search("capital Germany", k=5, mode="hybrid")]
    for recluster in (False, True):
        idx.compact(recluster=recluster)
        assert idx.has_lexical and [h.id for h in idx.search("Atlantic", k=3, mode="bm25")] == ["madrid"]
        assert [h.id for h in idx.search("capital", k=3, mode="bm25")] == ["paris"]
    reopened = Index.open(idx.path, model=idx.model)
    assert [h.id for h in reopened.search("Atlantic coast", k=1, mode="hybrid")] == ["madrid"]


def test_add_lexical_to_an_existing_index_and_errors(built_index, corpus_200):
    idx = built_index
    assert not idx.has_lexical
    with pytest.raises(InvalidArgument, match="add_lexical"):
        idx.search("x", mode="hybrid")
    gen = idx.generation
    idx.add_lexical()
    assert idx.has_lexical and idx.generation == gen + 1
    idx.add_lexical()  # idempotent
    assert idx.generation == gen + 1
    word = corpus_200[5].split()[0]
    hits = idx.search(word, k=200, mode="bm25")
    assert hits and all(word in h.text for h in hits)
    assert {h.id for h in hits} == {f"d{i}" for i, t in enumerate(corpus_200) if word in t.split()
                                    or word in t.replace(".", " ").split()}
    with pytest.raises(InvalidArgument, match="mode must be one of"):
        idx.search("x", mode="sparse")
    with pytest.raises(InvalidArgument, match="fusion must be one of"):
        idx.search("x", mode="hybrid", fusion="max")
    with pytest.raises(InvalidType, match="filter must be a dict"):
        idx.search("x", mode="bm25", filter="a=1")
    with pytest.raises(InvalidArgument, match="depth"):
        idx.search("x", mode="hybrid", depth=0)


def test_passages_on_the_lexical_side(tmp_path, tiny_model, corpus_200):
    long = " ".join(corpus_200[:20]) + " finally the word xylophonic appears."
    idx = Index.build(tmp_path / "p", [long, "short xylophonic note."], ids=["long", "short"], model=tiny_model,
                      truncate="chunk", lexical=True, show_progress=False)
    hits = idx.search("xylophonic", k=5, mode="bm25")
    assert sorted(h.id for h in hits) == ["long", "short"]  # one hit per document
    long_hit = next(h for h in hits if h.id == "long")
    assert "xylophonic" in long_hit.text and long_hit.passage > 0
    assert sorted(h.id for h in idx.search("xylophonic", k=5, mode="hybrid")) == ["long", "short"]


def test_bm25_is_the_documented_formula_with_folding_stemming_and_deletions(tmp_path, tiny_model):
    """README: Unicode words, case and diacritics folded, Porter stemming, English stopwords ignored in queries,
    BM25 with k1 = 1.2 and b = 0.75 (FTS5's idf), deleted rows counted in the statistics until ``compact()``."""
    import math

    texts = {"a": "Café running club runs every morning", "b": "The CAFE closes early", "c": "A morning swim",
             "d": "Quiet library reading room", "e": "Runners meet at the cafe", "f": "Violin lessons on Sunday",
             "g": "Garden tools for sale", "h": "Mountain trail map", "i": "Old train station", "j": "Blue ocean"}
    idx = Index.build(tmp_path / "b", list(texts.values()), ids=list(texts), model=tiny_model, lexical=True,
                      show_progress=False)

    def expected(query_terms, docs):
        stem = {"café": "cafe", "cafe": "cafe", "running": "run", "runs": "run", "runners": "runner"}
        toks = {i: [stem.get(w, w) for w in t.lower().split()] for i, t in docs.items()}
        n, avg = len(toks), sum(map(len, toks.values())) / len(toks)
        out = {}
        for i, words in toks.items():
            s = 0.0
            for term in query_terms:
                df = sum(term in w for w in toks.values())
                idf = max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6)
                f = words.count(term)
                s += idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len(words) / avg))
            if s > 0:
                out[i] = s
        return out

    for query, terms in (("CAFÉ", ["cafe"]), ("the running cafe", ["run", "cafe"])):  # "the": a stopword
        want = expected(terms, texts)
        got = {h.id: h.score for h in idx.search(query, k=10, mode="bm25")}
        assert got.keys() == want.keys() and all(got[i] == pytest.approx(want[i], rel=1e-6) for i in got), query
    idx.delete(["b"])  # gone from the answers, still in the statistics
    still = expected(["cafe"], texts)
    got = {h.id: h.score for h in idx.search("cafe", k=10, mode="bm25")}
    assert got.keys() == {"a", "e"} and all(got[i] == pytest.approx(still[i], rel=1e-6) for i in got)
    idx.compact()
    after = expected(["cafe"], {i: t for i, t in texts.items() if i != "b"})
    got = {h.id: h.score for h in idx.search("cafe", k=10, mode="bm25")}
    assert got.keys() == after.keys() and all(got[i] == pytest.approx(after[i], rel=1e-6) for i in got)
    assert after["a"] > 1.2 * still["a"] > 0.5  # the statistics did change (idf of "cafe": 0.76, then 1.10)
