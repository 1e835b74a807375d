"""The sharded index equals one index over the whole collection (same codec), in every mode, and has the Index
surface: reads by id, writes routed by id hash (never a duplicate across shards), generations, compaction."""

import json
import shutil

import pytest

from colbert_retriever import IndexClosedError, InvalidArgument, SearchConfig
from colbert_retriever.distributed import ShardedIndex, ShardError
from colbert_retriever.distributed import manifest as mf
from colbert_retriever.distributed.routing import shard_name, shard_of

from ..conftest import make_corpus
from ._ranking import assert_same_ranking
from .conftest import N_DOCS, twin

QUERIES = make_corpus(56, seed=99, min_words=2, max_words=7)
MODES = ("colbert", "bm25", "hybrid", "bm25_rerank")


@pytest.fixture(scope="module")
def pairs(built, embedded, _tiny_model, tmp_path_factory):
    """{shards: (ShardedIndex, a single index of the same embeddings with its codec)}."""
    out = {}
    for n, root in built.items():
        single = twin(root, tmp_path_factory.mktemp("twin") / "single", _tiny_model, embedded)
        out[n] = (ShardedIndex.open(root, model=_tiny_model), single)
    yield out
    for sh, single in out.values():
        sh.close()
        single.close()


def _compare(a, b, what, tol=1e-5):
    assert_same_ranking([(h.id, h.score) for h in a], [(h.id, h.score) for h in b], tol=tol, what=what)
    by_id = {h.id: h for h in b}
    for h in a:
        if h.id in by_id:
            o = by_id[h.id]
            assert (h.text, h.metadata) == (o.text, o.metadata), what
            assert h.relevance == pytest.approx(o.relevance, abs=tol), what
            if abs(h.score - o.score) < 1e-9:  # the same passage when the scores are the same
                assert h.passage == o.passage, what


@pytest.mark.parametrize("shards", [2, 4])
@pytest.mark.parametrize("mode", MODES)
def test_exact_merge_equals_one_index(pairs, shards, mode):
    """Top-10 ids and scores equal one index's. The lexical side ranks every matching document (depth): BM25
    gives many documents exactly the same score, and which of those tied at a cut one index keeps (the lower
    row) is not which the shards keep, so a cut inside a tie may pick different candidates for the next stage."""
    sh, single = pairs[shards]
    trace = []
    depth = {"depth": N_DOCS} if mode in ("hybrid", "bm25_rerank") else {}
    got = sh.search(QUERIES, k=10, mode=mode, trace=trace, **depth)
    want = single.search(QUERIES, k=10, mode=mode, **depth)
    assert len(got) == len(QUERIES) >= 50
    for q, a, b in zip(QUERIES, got, want):
        _compare(a, b, f"{shards} shards, {mode}, {q!r}")
    assert sum(len(h) for h in got) > 0.9 * 10 * len(QUERIES)
    if mode in ("colbert", "hybrid"):  # every shard searched every query (PLAID's plan: exact at this size)
        assert len(trace) == shards * len(QUERIES)
        assert all(t.reason == "collection within the exact-stage budget" for t in trace)


@pytest.mark.parametrize("mode", MODES)
def test_exact_merge_with_filters_ids_and_knobs(pairs, mode):
    sh, single = pairs[4]
    allowed = [f"d{i}" for i in range(0, N_DOCS, 5)]
    for kwargs in ({"filter": {"g": 1}}, {"ids": allowed}, {"filter": {"g": {"$in": [0, 2]}}, "ids": allowed},
                   {"exhaustive": True, "k": 25}, {"alpha": 0.3}):
        kw = {"k": 10, "depth": N_DOCS, **kwargs}
        got, want = sh.search(QUERIES[:12], mode=mode, **kw), single.search(QUERIES[:12], mode=mode, **kw)
        for q, a, b in zip(QUERIES, got, want):
            _compare(a, b, f"{mode} {kwargs} {q!r}")
            if "filter" in kwargs and a:
                assert all(h.metadata["g"] in (1,) if kwargs["filter"] == {"g": 1} else h.metadata["g"] in (0, 2)
                           for h in a)
            if "ids" in kwargs:
                assert {h.id for h in a} <= set(allowed)


def test_rrf_fusion_equal_up_to_tied_ranks(pairs):
    """Reciprocal-rank fusion scores a document by its ranks, and documents with exactly the same score (BM25
    gives many) are ranked in a different order by one index (row order) and by the shards: the fused scores may
    differ by the rank difference of such ties, no more."""
    sh, single = pairs[4]
    got = sh.search(QUERIES, k=10, mode="hybrid", fusion="rrf", depth=N_DOCS)
    want = single.search(QUERIES, k=10, mode="hybrid", fusion="rrf", depth=N_DOCS)
    overlap = sum(len({h.id for h in a} & {h.id for h in b}) for a, b in zip(got, want)) / (10 * len(QUERIES))
    assert overlap > 0.9
    assert got[0][0].score == pytest.approx(want[0][0].score, rel=0.05)


def test_search_embeddings_and_single_query(pairs, _tiny_model):
    sh, single = pairs[2]
    Q = _tiny_model.encode_queries(QUERIES[:5])
    got = sh.search_embeddings(Q, 7, config=SearchConfig(exhaustive=True))
    want = single.search_embeddings(Q, 7, config=SearchConfig(exhaustive=True))
    for a, b in zip(got, want):
        _compare(a, b, "embeddings")
    one = sh.search(QUERIES[0], k=3)
    assert isinstance(one, list) and [h.rank for h in one] == [1, 2, 3]


def test_reads_by_id(pairs, collection):
    sh, single = pairs[4]
    assert len(sh) == len(single) == N_DOCS
    want = single.get(["d7", "nope", "d3", "d7"])
    assert sh.get(["d7", "nope", "d3", "d7"]) == want and [r.id for r in want] == ["d7", "d3"]
    assert sorted(sh.ids()) == sorted(single.ids())
    assert sorted(sh.ids(filter={"g": 2})) == sorted(single.ids(filter={"g": 2}))
    assert sh.has_lexical and sh.num_shards == 4
    m = json.loads((sh.path / mf.MANIFEST).read_text())
    assert m["routing"] == "blake2b-64" and sum(s["documents"] for s in m["shards"]) == N_DOCS
    for s in m["shards"]:  # every document in the shard its id hashes to
        shard_ids = json.loads((sh.path / s["name"] / "metadata.json").read_text())["counts"]["live"]
        assert shard_ids >= s["documents"]  # passages count as rows
    for r in collection[:40]:
        assert sh._call([(shard_name(shard_of(r["_id"], 4)), "present", ([r["_id"]],))]) == [[r["_id"]]]


@pytest.fixture
def writable(built, _tiny_model, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built[2], root)
    sh = ShardedIndex.open(root, model=_tiny_model)
    yield sh
    sh.close()


def _gens(sh):
    return mf.read(sh.path).generations()


def test_writes_are_routed_and_never_duplicate(writable, collection):
    sh = writable
    g0, gens0 = sh.generation, _gens(sh)
    home = shard_name(shard_of("new-1", 2))
    assert sh.add(["zebra quartz xylophone"], ids=["new-1"], metadatas=[{"g": 9}]) == ["new-1"]
    assert len(sh) == N_DOCS + 1 and sh.generation == g0 + 1
    gens1 = _gens(sh)
    assert gens1[home] == gens0[home] + 1 and all(gens1[n] == gens0[n] for n in gens0 if n != home)
    with pytest.raises(InvalidArgument, match="ids already in the index: \\['d0'\\]"):
        sh.add(["a second d0"], ids=["d0"])
    assert sh.generation == g0 + 1 and len(sh) == N_DOCS + 1  # refused whole, nothing written
    sh.upsert(["d0 again, replaced", "one more"], ids=["d0", "new-2"])
    assert len(sh) == N_DOCS + 2
    assert sh.get("d0")[0].text == "d0 again, replaced"
    assert sh.get("d0")[0].metadata == {"g": 0, "name": "doc 0"}  # no metadata given: it keeps its own
    hits = sh.search("d0 again, replaced", k=N_DOCS + 2, mode="colbert")
    assert [h.id for h in hits].count("d0") == 1 and len({h.id for h in hits}) == len(hits)
    assert len(sh.ids()) == len(set(sh.ids())) == N_DOCS + 2
    assert sh.delete(["new-1", "d1", "missing"]) >= 2  # rows, as Index.delete counts them (passages each)
    assert sh.get(["new-1", "d1"]) == [] and len(sh) == N_DOCS
    assert sh.delete(filter={"g": 2}) >= sum(1 for r in collection[2:] if r["g"] == 2)  # rows, passages each
    assert sh.ids(filter={"g": 2}) == []
    left = len(sh)
    assert all(h.metadata.get("g") != 2 for h in sh.search(QUERIES[0], k=50, mode="hybrid"))
    g = sh.generation
    sh.compact()
    assert len(sh) == left and sh.generation == g + 1
    with pytest.raises(InvalidArgument, match="one codec"):
        sh.compact(recluster=True)


def test_add_embeddings_routes_by_id(writable, _tiny_model):
    sh = writable
    embs = _tiny_model.encode_documents(["embedded alpha beta", "embedded gamma"])
    sh.add_embeddings(embs, ids=["e1", "e2"], texts=["embedded alpha beta", "embedded gamma"])
    assert len(sh) == N_DOCS + 2
    top = sh.search_embeddings([embs[0]], 3, config=SearchConfig(exhaustive=True))[0]
    assert top[0].id == "e1" and top[0].score == pytest.approx(embs[0].shape[0], rel=0.05)  # 2-bit residuals
    assert sh.get("e2")[0].text == "embedded gamma"
    with pytest.raises(InvalidArgument, match="already in the index"):
        sh.add_embeddings(embs[:1], ids=["e1"])


def test_a_writer_killed_between_shards_is_recorded(writable, _tiny_model, caplog):
    """A shard committed after the manifest (its writer died before the manifest): the next search records it."""
    from colbert_retriever import Index

    sh = writable
    g0 = sh.generation
    name = shard_name(shard_of("orphan", 2))
    direct = Index.open(sh.path / name, model=_tiny_model)
    direct.add(["orphan text"], ids=["orphan"])
    direct.close()
    assert sh.search("orphan text", k=1, ids=["orphan"])[0].id == "orphan"
    assert sh.generation == g0 + 1 and _gens(sh)[name] == mf.read(sh.path / ".." / sh.path.name).generations()[name]
    assert "committed after the manifest" in caplog.text


def test_a_lost_shard_is_named(writable):
    sh = writable
    name = shard_name(1)
    m = mf.read(sh.path)
    mf.write(sh.path, m.advanced({name: (m.generations()[name] + 5, 0)}))  # the manifest names a newer generation
    with pytest.raises(ShardError, match=f"shard {name} .* behind the manifest"):
        sh.search("python", k=3)


def test_the_server_backend_over_shards(pairs):
    """What a server replica does with a sharded index (one forward pass, one fan-out per group of requests)."""
    from colbert_retriever.serve.backend import Backend

    sh, _ = pairs[2]
    backend = Backend(sh, "sharded")
    requests = [([QUERIES[0]], {"k": 5}), ([QUERIES[1], QUERIES[2]], {"k": 5}),
                ([QUERIES[3]], {"k": 5, "mode": "bm25"}),
                ([QUERIES[4]], {"k": 5, "mode": "hybrid", "filter": {"g": 0}}), ([QUERIES[5]], {"k": -1})]
    out = backend.search_many(requests)
    for (queries, params), got in zip(requests[:4], out[:4]):
        for a, b in zip(got, sh.search(queries, **params)):
            _compare(a, b, str(params), tol=1e-4)
    assert isinstance(out[4], InvalidArgument)
    health = backend.health()
    assert health["kind"] == "sharded" and health["batches"] == 1 and health["documents"] == len(sh)


def test_closed(built, _tiny_model):
    sh = ShardedIndex.open(built[2], model=_tiny_model)
    sh.close()
    sh.close()
    with pytest.raises(IndexClosedError):
        sh.search("python")
    assert "closed" in repr(sh)
