import itertools

import pytest
import torch

from colbert_retriever import Index, InvalidArgument, InvalidType

from .conftest import REAL_PATH_QUERIES, assert_ranked_alike, assert_real_path, make_corpus


def ids_of(hits):
    return [h.id for h in hits]


def test_plaid_equals_exhaustive_when_candidates_cover_all(large_index_path, tiny_model):
    """Every centroid probed, no pruning, a third of the collection scored exactly (the real path: stages run on a
    subset): PLAID's top-10 and scores equal exhaustive search's."""
    idx = Index.open(large_index_path, model=tiny_model)
    K = idx.metadata["codec"]["num_centroids"]
    for q in REAL_PATH_QUERIES[:8]:
        trace = []
        plaid = idx.search(q, k=10, ncells=K, ndocs=4000, centroid_score_threshold=-10.0, trace=trace)
        assert trace[0].candidates == 3000 and trace[0].exact_scored == 1000
        assert_real_path(trace, 3000)
        assert_ranked_alike(plaid, idx.search(q, k=10, exhaustive=True), 1e-5)


def test_exhaustive_equals_reference_maxsim(built_index, tiny_model, corpus_200):
    """Exhaustive index search scores each document within the codec's error of uncompressed MaxSim, and ranks
    close to it: top-10 overlap over 60 queries (the random tiny model scores documents within a few percent of
    each other, so 2-bit compression reorders some)."""
    overlap, queries = 0, make_corpus(60, seed=23)
    for q in queries:
        hits = built_index.search(q, k=10, exhaustive=True)
        exact = {h.id: h.score for h in tiny_model.rerank(q, corpus_200, ids=[f"d{i}" for i in range(200)])}
        overlap += len(set(sorted(exact, key=exact.get, reverse=True)[:10]) & set(ids_of(hits)))
        for h in hits:
            assert h.score == pytest.approx(exact[h.id], rel=0.05)
    assert overlap / (10 * len(queries)) >= 0.6  # measured 0.72 natively and capped to AVX2


def test_agreement_on_generated_corpus(large_index_path, tiny_model):
    """Default knobs on a collection where they score a subset exactly agree with exhaustive top-10."""
    idx = Index.open(large_index_path, model=tiny_model)
    trace, agree = [], 0
    for q in REAL_PATH_QUERIES:
        got = ids_of(idx.search(q, k=10, trace=trace))
        agree += len(set(got) & set(ids_of(idx.search(q, k=10, exhaustive=True))))
    assert_real_path(trace, 3000)
    assert agree / (10 * len(REAL_PATH_QUERIES)) >= 0.95


def test_batch_queries_equal_single(large_index_path, tiny_model):
    idx = Index.open(large_index_path, model=tiny_model)
    qs = REAL_PATH_QUERIES[:5]
    trace = []
    singles = [idx.search(q, k=5, trace=trace) for q in qs]
    many = idx.search(qs, k=5, trace=trace)
    assert_real_path(trace, 3000)
    assert len(many) == 5
    for hits, single in zip(many, singles):  # a batch encodes in other matrix shapes: last bits may differ
        assert_ranked_alike(hits, single, 1e-4)


def test_text_search_takes_the_real_rows_once_and_resolves_kernels_once(large_index_path, tiny_model):
    """``search(texts)`` runs on the encoder's real rows (``encode_query_rows``: no padding to strip) and gives
    the hits ``search_embeddings`` gives for the padded ``encode_queries``; the kernel family is resolved once per
    call, not once per query (counted with a profile hook: tests never replace library attributes)."""
    import sys
    import threading

    from colbert_retriever.kernels import dispatch

    idx = Index.open(large_index_path, model=tiny_model)
    qs = REAL_PATH_QUERIES[:4]
    calls, me = [], threading.get_ident()

    def count(frame, event, arg):
        if event == "call" and frame.f_code is dispatch.resolve.__code__ and threading.get_ident() == me:
            calls.append(1)

    trace = []
    sys.setprofile(count)
    try:
        by_text = idx.search(qs, k=5, trace=trace)
    finally:
        sys.setprofile(None)
    assert len(calls) == 1 and len(trace) == 4
    assert_real_path(trace, 3000)
    by_embeddings = idx.search_embeddings(tiny_model.encode_queries(qs), k=5)
    for a, b in zip(by_text, by_embeddings):
        assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]  # same rows, same arithmetic


def test_filters(built_index):
    hits = built_index.search("python", k=100, filter={"group": 1})
    assert len(hits) == 50 and all(h.metadata["group"] == 1 for h in hits)
    hits = built_index.search("python", k=100, filter={"group": {"$in": [0, 3]}, "even": True})
    assert len(hits) == 50 and all(h.metadata["group"] == 0 for h in hits)
    hits = built_index.search("python", k=5, filter={"$or": [{"name": "doc7"}, {"name": "doc9"}]})
    assert sorted(ids_of(hits)) == ["d7", "d9"]
    hits = built_index.search("python", k=500, filter={"group": {"$gte": 2, "$lt": 3}})
    assert len(hits) == 50 and {h.metadata["group"] for h in hits} == {2}
    assert built_index.search("python", k=5, filter={"missing_field": 1}) == []
    assert len(built_index.search("python", k=500, filter={"group": {"$ne": 1}})) == 150
    assert len(built_index.search("python", k=500, filter={"$not": {"group": 1}})) == 150
    hits = built_index.search("python", k=3, ids=["d1", "d2", "d3", "d4"])
    assert len(hits) == 3 and set(ids_of(hits)) <= {"d1", "d2", "d3", "d4"}


def test_selective_filter_returns_k(built_index):
    """A filter matching few documents still returns k of them even if PLAID's candidates miss them."""
    hits = built_index.search("music guitar", k=4, filter={"name": {"$in": ["doc1", "doc50", "doc99", "doc150"]}},
                              ncells=1, ndocs=4)
    assert sorted(ids_of(hits)) == ["d1", "d150", "d50", "d99"]


def test_widen_when_candidates_short(built_index):
    hits = built_index.search("alpha", k=150, ncells=1, ndocs=8)
    assert len(hits) == 150 and len(set(ids_of(hits))) == 150


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"queries": "", "k": 3}, InvalidArgument, "empty"),
    ({"queries": "   ", "k": 3}, InvalidArgument, "empty"),
    ({"queries": "q", "k": 0}, InvalidArgument, "k must be > 0"),
    ({"queries": "q", "k": 2.5}, InvalidType, "k must be an int"),
    ({"queries": "q", "k": 3, "filter": {"a": {"$regex": "x"}}}, InvalidArgument, "unknown filter operator"),
    ({"queries": "q", "k": 3, "filter": {"$nope": []}}, InvalidArgument, "unknown filter operator"),
    ({"queries": "q", "k": 3, "filter": {"bad field!": 1}}, InvalidArgument, "not a valid metadata key"),
    ({"queries": "q", "k": 3, "filter": ["x"]}, InvalidType, "filter must be a dict"),
    ({"queries": [], "k": 3}, InvalidArgument, "empty"),
])
def test_bad_search_input(built_index, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        built_index.search(**kwargs)


def test_deleted_only_index_returns_empty(tmp_path, tiny_model):
    idx = Index.build(tmp_path / "i", ["a b c", "d e f"], ids=["a", "b"], model=tiny_model, show_progress=False)
    idx.delete(["a", "b"])
    assert idx.search("a b", k=5) == [] and idx.search(["x", "y"], k=2) == [[], []]
    assert len(idx) == 0


def test_knobs_do_not_leak(built_index, corpus_200):
    q = corpus_200[0]
    a = built_index.search(q, k=10)
    built_index.search(q, k=10, ncells=1, ndocs=8, centroid_score_threshold=0.9)
    assert ids_of(built_index.search(q, k=10)) == ids_of(a)


def test_search_embeddings_shape_error(built_index):
    with pytest.raises(InvalidArgument, match="expected"):
        built_index.search_embeddings(torch.zeros(2, 4, 7), k=3)


def test_pruned_interaction_paths_agree():
    """Pruned centroid interaction gives the same scores whether computed from the inverted lists (few kept
    centroids) or from the candidates' tokens (many kept centroids); checked against a direct loop."""
    from colbert_retriever.search import arrays as arrays_mod, stages
    from colbert_retriever.codec.residual import ResidualCodec
    from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths

    g = torch.Generator().manual_seed(1)
    K, dim = 40, 16
    cents = torch.nn.functional.normalize(torch.randn(K, dim, generator=g), dim=-1)
    codec = ResidualCodec(cents, torch.tensor([0.0]), torch.tensor([-0.01, 0.01]), 1)
    lengths = torch.randint(1, 30, (60,), generator=g)
    codes = torch.randint(0, K, (int(lengths.sum()),), generator=g)
    ivf_p, ivf_o = inverted_file(codes.numpy(), lengths.numpy(), K)
    off = offsets_from_lengths(lengths)
    arrays = arrays_mod.IndexArrays.single(codec, codes, torch.zeros(codes.numel(), 2, dtype=torch.uint8), off,
                               torch.from_numpy(ivf_p).long(), torch.from_numpy(ivf_o))
    Sc = cents @ torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=-1).T
    pids = torch.tensor([0, 3, 7, 20, 59])
    for threshold in (0.9, 0.5, 0.0, -1.0):  # from "inverted lists are cheaper" to "tokens are cheaper"
        keep = Sc.amax(1) >= threshold
        ref = []
        for p in pids.tolist():
            c = codes[off[p] : off[p + 1]]
            s = torch.where(keep[c][:, None], Sc[c], torch.zeros(1, 4))
            ref.append(float(torch.cat([s, torch.zeros(1, 4)]).max(0).values.sum()))
        assert torch.allclose(stages.pruned_interaction(Sc, arrays, pids, threshold), torch.tensor(ref), atol=1e-6)


def test_search_plan_defaults_adapt_and_explicit_knobs_keep_plaid_meaning():
    from colbert_retriever import SearchConfig
    from colbert_retriever.search.plaid import CELLS_PER_QUERY, PROBED_CELLS_PER_QUERY, plan

    explicit = plan(SearchConfig(ncells=1, centroid_score_threshold=0.5, ndocs=64), 10, q_len=3, avg_doclen=20)
    assert (explicit.ncells, explicit.centroid_score_threshold, explicit.stage2_docs,
            explicit.exact_docs) == (1, 0.5, 64, 16)
    assert plan(SearchConfig(ndocs=8), 10).exact_docs == 10  # never fewer than k
    long_q = plan(SearchConfig(), 10, q_len=32, avg_doclen=200)  # scifact-like
    short_q = plan(SearchConfig(), 10, q_len=4, avg_doclen=20)  # WordNet-like: 1-3 words against glosses
    assert long_q.ncells == 8 and long_q.stage2_docs == 512 and long_q.exact_docs == 128
    assert long_q.centroid_score_threshold is None  # default stage 2: probed scoring
    pruned = plan(SearchConfig(centroid_score_threshold=0.45), 10, q_len=32, avg_doclen=200)  # PLAID's stage 2
    assert (pruned.ncells, pruned.centroid_score_threshold, pruned.stage2_docs) == (2, 0.45, 512)
    assert short_q.ncells == -(-PROBED_CELLS_PER_QUERY // 4)  # at least that many cells probed in all
    short_pruned = plan(SearchConfig(centroid_score_threshold=0.45), 10, q_len=4, avg_doclen=20)
    assert short_pruned.ncells == -(-CELLS_PER_QUERY // 4)
    assert short_q.exact_docs > 10 * long_q.exact_docs and short_q.stage2_docs >= short_q.exact_docs
    # the exact stage's work (document tokens x query tokens) stays within the same budget
    assert short_q.exact_docs * 20 * 4 <= 1 << 18
    k100 = plan(SearchConfig(), 100, q_len=32, avg_doclen=200)
    assert k100.exact_docs >= 512 and k100.stage2_docs == 2048
    big_k = plan(SearchConfig(), 1000, q_len=32, avg_doclen=200)
    assert big_k.exact_docs >= 1000 and big_k.stage2_docs >= 8000


def test_fast_candidate_stage_equals_its_slow_twin(tmp_path, tiny_model):
    """``_pruned_candidates`` (one pass over the inverted lists with a by-document position table) gives the same
    candidates and scores as ``candidate_pids`` then ``pruned_interaction``, with and without a filter."""
    from colbert_retriever.search import stages

    texts = make_corpus(400, seed=5, min_words=8, max_words=20)
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, show_progress=False)
    arrays = idx.snapshot().arrays
    Q = idx.model.encode_queries(make_corpus(6, seed=6, min_words=3, max_words=9))
    allowed = torch.rand(arrays.num_docs, generator=torch.Generator().manual_seed(0)) < 0.5
    checked = 0
    for q in Q:
        q = q[q.abs().sum(-1) > 0]
        Sc = arrays.codec.centroids @ q.T
        for ncells, threshold in ((1, 0.5), (2, 0.3), (4, 0.0), (2, 0.99)):
            for mask in (None, allowed):
                pids, scores = stages.pruned_candidates(Sc, arrays, ncells, threshold, mask)
                ref = stages.candidate_pids(Sc, arrays, ncells)
                if mask is not None:
                    ref = ref[mask[ref]]
                assert torch.equal(pids, ref)
                assert torch.allclose(scores, stages.pruned_interaction(Sc, arrays, ref, threshold), atol=1e-6)
                checked += int(pids.numel() > 0)
    assert checked > 20


@pytest.mark.parametrize("kernels", ["torch", "numba"])
def test_default_path_runs_plaid_stages_at_its_scale(large_index_path, tiny_model, kernels):
    """With default knobs and a collection larger than the exact-stage budget, search must go through probed
    scoring and the exact stage on a subset (not the exhaustive fallback) and agree
    with exhaustive search; explicit knobs keep PLAID's meaning (a threshold: pruned centroid interaction; ndocs
    after it, ndocs // 4 after full centroid interaction, those scored exactly). What ran is read from the
    search's trace."""
    idx = Index.open(large_index_path, model=tiny_model)  # 3,000 documents of ~20 tokens (doc_maxlen 24)
    texts, queries = range(3000), REAL_PATH_QUERIES  # long queries: a small exact-stage budget
    trace = []
    got = [ids_of(idx.search(q, k=10, trace=trace, kernels=kernels)) for q in queries]
    assert len(trace) == len(queries) and {t.kernels for t in trace} == {kernels}
    assert all(t.stage2 == "probed" and not t.exhaustive for t in trace), trace  # default stage 2: probed scoring
    assert max(t.exact_scored for t in trace) < len(texts) / 2  # the exact stage scored a subset
    assert all(t.candidates > t.exact_scored for t in trace)

    trace = []
    explicit = [ids_of(idx.search(q, k=10, ncells=2, centroid_score_threshold=0.3, ndocs=128, trace=trace,
                                  kernels=kernels)) for q in queries]
    assert all(t.stage2 == "pruned" and not t.exhaustive for t in trace)  # a threshold: PLAID's pruned stage 2
    assert all(t.stage2_kept == 128 for t in trace)  # stage 2 kept ndocs
    # stage 3 ran (torch: on float16 scores, Precision.half_interaction; numba reads float32), and PLAID's
    # meaning: ndocs // 4 scored exactly
    assert all(t.interaction_dtype == (torch.float16 if kernels == "torch" else torch.float32) for t in trace)
    assert max(t.exact_scored for t in trace) == 128 // 4
    ref = [ids_of(idx.search(q, k=10, exhaustive=True)) for q in queries]
    for run in (got, explicit):
        agree = sum(len(set(g) & set(r)) for g, r in zip(run, ref)) / (10 * len(queries))
        assert agree >= 0.9


def test_plaid_finds_planted_answers_in_clustered_embeddings():
    """Model-free: 4,000 documents of 40 token embeddings drawn around 300 topics (cosine ~0.83 to their topic:
    clustered like real ColBERT tokens), compressed at 2 bits; each query
    is 16 noisy copies of one document's tokens. PLAID with default knobs (the real path: the collection is far
    above the exact-stage budget) ranks the planted document first as often as exhaustive search does, and agrees
    with exhaustive top-10."""
    from colbert_retriever import SearchConfig
    from colbert_retriever.search import plaid
    from colbert_retriever.search import arrays as arrays_mod
    from colbert_retriever.codec.residual import ResidualCodec, code_dtype
    from colbert_retriever.config import CodecConfig
    from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths

    g = torch.Generator().manual_seed(0)
    dim, n_docs, doclen, topics = 128, 4000, 40, 300
    centers = torch.nn.functional.normalize(torch.randn(topics, dim, generator=g), dim=-1)
    doc_topics = torch.randint(0, topics, (n_docs, 3), generator=g)  # each document mixes 3 topics
    pick = doc_topics.gather(1, torch.randint(0, 3, (n_docs, doclen), generator=g))
    embs = torch.nn.functional.normalize(centers[pick] + 0.06 * torch.randn(n_docs, doclen, dim, generator=g), dim=-1)
    flat = embs.reshape(-1, dim)
    codec = ResidualCodec.fit(flat[torch.randperm(flat.shape[0], generator=g)[:60000]], CodecConfig(nbits=2),
                              flat.shape[0])
    codes, packed = codec.compress(flat)
    codes = codes.to(getattr(torch, code_dtype(codec.num_centroids).name))  # as an index stores them
    lengths = torch.full((n_docs,), doclen)
    ivf_p, ivf_o = inverted_file(codes.numpy(), lengths.numpy(), codec.num_centroids)
    arrays = arrays_mod.IndexArrays.single(codec, codes, packed, offsets_from_lengths(lengths),
                                      torch.from_numpy(ivf_p).long(), torch.from_numpy(ivf_o))
    planted = torch.randperm(n_docs, generator=g)[:40]
    hit_exh = 0
    hit = {"probed": 0, "pruned": 0}
    agree = {"probed": 0, "pruned": 0}
    configs = {"probed": SearchConfig(), "pruned": SearchConfig(centroid_score_threshold=0.45)}
    for d in planted.tolist():
        tokens = embs[d, torch.randperm(doclen, generator=g)[:16]]
        q = torch.nn.functional.normalize(tokens + 0.03 * torch.randn(16, dim, generator=g), dim=-1)
        ref, ref_scores = plaid.search(q, arrays, 10, SearchConfig(exhaustive=True))
        hit_exh += int(ref[0] == d)
        for name, cfg in configs.items():  # the default stage 2 and PLAID's pruned one
            pids, scores = plaid.search(q, arrays, 10, cfg)
            assert plaid.plan(cfg, 10, 16, doclen).exact_docs < n_docs / 4  # not the small-collection path
            assert bool((scores[:-1] >= scores[1:]).all()) and len(set(pids.tolist())) == 10
            hit[name] += int(pids[0] == d)
            agree[name] += len(set(pids.tolist()) & set(ref.tolist()))
    assert hit_exh >= 38
    for name in configs:
        assert hit[name] >= hit_exh, (name, hit)
        assert agree[name] / (10 * len(planted)) >= 0.95, (name, agree)


def test_stage_threads_do_not_change_results_or_leak(built_index, corpus_200):
    """The stage thread count (auto, forced 1, forced 2) changes no result, and a search leaves the caller's
    torch thread count as it found it, in its own thread and in others."""
    import threading

    before = torch.get_num_threads()
    results = {}
    for n in (None, 1, 2):
        trace = []
        results[n] = [ids_of(built_index.search(q, k=5, ncells=1, ndocs=16, threads=n, trace=trace))
                      for q in corpus_200[:6]]
        assert torch.get_num_threads() == before
        if n is not None:
            assert {t.threads for t in trace if not t.exhaustive} <= {n}
    assert results[None] == results[1] == results[2]
    seen = []

    def worker():
        torch.set_num_threads(1)
        built_index.search(corpus_200[0], k=5)
        seen.append(torch.get_num_threads())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [1, 1, 1] and torch.get_num_threads() == before
    finally:  # torch.set_num_threads in a thread also sets the count every later new thread starts with
        torch.set_num_threads(before)


def test_centroid_interaction_equals_its_scatter_twin():
    """The padded-block centroid interaction equals the scatter-max reference, over several segments (rows
    gathered out of order), with empty documents, in one block and in many."""
    from colbert_retriever.search import arrays as arrays_mod, stages
    from colbert_retriever.codec.residual import ResidualCodec
    from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths

    g = torch.Generator().manual_seed(4)
    K, dim = 50, 16
    cents = torch.nn.functional.normalize(torch.randn(K, dim, generator=g), dim=-1)
    codec = ResidualCodec(cents, torch.tensor([0.0]), torch.tensor([-0.01, 0.01]), 1)
    lengths = torch.randint(0, 35, (90,), generator=g)
    lengths[[3, 40]] = 0
    codes = torch.randint(0, K, (int(lengths.sum()),), generator=g).to(torch.uint8)
    ivf_p, ivf_o = inverted_file(codes.numpy(), lengths.numpy(), K)
    off = offsets_from_lengths(lengths)
    one = arrays_mod.IndexArrays.single(codec, codes, torch.zeros(codes.numel(), 2, dtype=torch.uint8), off,
                                   torch.from_numpy(ivf_p).long(), torch.from_numpy(ivf_o))
    cut = int(off[50])  # the same rows split in two segments
    two = arrays_mod.IndexArrays(codec, arrays_mod.Rows([codes[:cut], codes[cut:]]), one.residuals, one.inv_norms, off,
                            one.ivf, one.ivf_sizes)
    Sc = cents @ torch.nn.functional.normalize(torch.randn(6, dim, generator=g), dim=-1).T
    pids = torch.tensor([0, 3, 7, 20, 40, 49, 50, 51, 77, 89])
    ref = stages.centroid_interaction_scatter(Sc, one, pids)
    assert float(ref[1]) == 0.0 and float(ref[4]) == 0.0
    for rows in (None, 40):  # one block, many blocks
        for arrays in (one, two):
            assert torch.equal(stages.centroid_interaction(Sc, arrays, pids, max_rows=rows), ref)
            assert torch.equal(stages.centroid_interaction(Sc, arrays, torch.arange(90), max_rows=rows),
                               stages.centroid_interaction_scatter(Sc, arrays, torch.arange(90)))
            # float16 scores (what search passes on CPU): the reference over the same rounded values, float32 sums
            half = stages.centroid_interaction(Sc.half(), arrays, pids, max_rows=rows)
            assert half.dtype == torch.float32
            assert torch.allclose(half, stages.centroid_interaction_scatter(Sc.half().float(), arrays, pids), atol=1e-6)
            assert (half - ref).abs().max() <= Sc.shape[1] * 2 ** -11


def test_unique_inverse_by_table_and_by_sort():
    from colbert_retriever.search import stages

    g = torch.Generator().manual_seed(3)
    for n, m in ((1, 5), (50, 200), (1000, 30), (1000, 0)):
        x = torch.randint(0, n, (m,), generator=g)
        ref_u, ref_inv = torch.unique(x, return_inverse=True)
        for method in ("sort", "table", "auto"):
            u, inv = stages.unique_inverse(x, n, method)
            assert torch.equal(u, ref_u) and torch.equal(inv, ref_inv) and inv.dtype == torch.long


def test_probed_scores_equal_a_direct_loop():
    """Probed scoring (the default stage 2): candidates are the documents in each query token's ``ncells`` best
    cells; per token, a document scores its best probed cell that lists it (>= 0), else IMPUTE x the token's last
    probed cell's score; summed. Checked against a loop, over two segments, with and without a filter, finding
    the distinct candidates by sorting and by a table."""
    from colbert_retriever.search import arrays as arrays_mod, stages
    from colbert_retriever.codec.residual import ResidualCodec
    from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths

    g = torch.Generator().manual_seed(6)
    K, dim, q_len = 30, 16, 5
    cents = torch.nn.functional.normalize(torch.randn(K, dim, generator=g), dim=-1)
    codec = ResidualCodec(cents, torch.tensor([0.0]), torch.tensor([-0.01, 0.01]), 1)
    lengths = torch.randint(1, 12, (80,), generator=g)
    codes = torch.randint(0, K, (int(lengths.sum()),), generator=g)
    off = offsets_from_lengths(lengths)
    parts = []
    for lo, hi in ((0, 50), (50, 80)):  # two segments, each with its own inverted file
        c = codes[off[lo] : off[hi]]
        p, o = inverted_file(c.numpy(), lengths[lo:hi].numpy(), K)
        parts.append(arrays_mod.IvfPart(torch.from_numpy(p), torch.from_numpy(o), lo))
    sizes = sum(p.offsets[1:] - p.offsets[:-1] for p in parts)
    arrays = arrays_mod.IndexArrays(codec, arrays_mod.Rows([codes]),
                                    arrays_mod.Rows([torch.zeros(codes.numel(), 2, dtype=torch.uint8)]),
                               arrays_mod.Rows([torch.ones(codes.numel())]), off, parts, sizes)
    ScT = torch.nn.functional.normalize(torch.randn(q_len, dim, generator=g), dim=-1) @ cents.T
    allowed = torch.rand(80, generator=g) < 0.6
    for ncells, mask, unique in itertools.product((1, 3, 7), (None, allowed), ("sort", "table")):
        top = torch.topk(ScT, ncells, dim=1)
        pids, scores = stages.probed_scores(ScT, arrays, ncells, mask, unique=unique)
        expect = {}
        for d in range(80):
            if mask is not None and not mask[d]:
                continue
            cells = set(codes[off[d] : off[d + 1]].tolist())
            per_token, probed = [], False
            for j in range(q_len):
                served = [float(v) for c, v in zip(top.indices[j].tolist(), top.values[j]) if c in cells]
                probed |= bool(served)
                best = max([0.0, *served])
                per_token.append(best if best > 0 else stages.IMPUTE * max(0.0, float(top.values[j, -1])))
            if probed:
                expect[d] = sum(per_token)
        assert pids.tolist() == sorted(expect)
        assert torch.allclose(scores, torch.tensor([expect[d] for d in sorted(expect)]), atol=1e-5)


def test_passages_ranked_as_documents_on_the_real_path(tmp_path, tiny_model):
    """Documents stored as several passages: PLAID ranks documents (each once, as its best passage) in one pass
    over the stages, on the real path, agreeing with exhaustive search; a document's score is its best
    passage's exact MaxSim."""
    texts = make_corpus(600, seed=31, min_words=30, max_words=60)
    # default truncate (chunk); unpooled as conftest's large_index_path (the random tiny model's pooled rows are
    # means of unrelated vectors: PLAID's agreement with exhaustive search is tested on pooled clustered embeddings)
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, show_progress=False, pool_factor=1)
    rows = idx.metadata["counts"]["live"]
    assert rows > 1.5 * len(texts) and len(idx) == len(texts)
    trace, agree = [], 0
    # agreement is a mean over queries: 100 of them (a 10-query sample of this corpus swings by +-4 points)
    queries = make_corpus(100, seed=32, min_words=10, max_words=14)
    for q in queries:
        hits = idx.search(q, k=10, ncells=4, ndocs=256, trace=trace)
        exact = idx.search(q, k=len(texts), exhaustive=True)
        assert len({h.id for h in hits}) == 10 and all(h.passage is not None for h in hits)
        agree += len({h.id for h in hits} & {h.id for h in exact[:10]})
        # each document returned as its best passage, with that passage's exact score
        best = {h.id: (h.score, h.passage) for h in exact}
        assert all(h.score == pytest.approx(best[h.id][0], abs=1e-5) and h.passage == best[h.id][1] for h in hits)
    assert_real_path(trace, rows)
    assert agree / (10 * len(queries)) >= 0.9


def test_plaid_returns_each_document_as_its_best_row_even_when_the_stages_dropped_it():
    """With groups (passages), the rows of the k documents returned that the stages did not keep are scored
    before the documents are ranked: each document comes back as its best row with its exact score (the real
    path, with knobs small enough that the stages drop some of those rows: asserted by the trace)."""
    from colbert_retriever import SearchConfig
    from colbert_retriever.search import plaid
    from colbert_retriever.search.arrays import Groups

    from .test_numba import clustered_arrays, query

    from colbert_retriever.search import stages

    arrays, x, _ = clustered_arrays(n_docs=3000, cuts=(0.6,))
    n = arrays.num_docs
    g = torch.Generator().manual_seed(5)
    of_row = torch.repeat_interleave(torch.arange(n), torch.randint(1, 30, (n,), generator=g))[:n]
    shuffled = of_row[torch.randperm(n, generator=g)]
    # documents' rows in order or shuffled; every row allowed, or half the documents (a filter), or every row but
    # a few of each document (rows the caller excludes are neither scored nor returned)
    some_docs = torch.rand(int(of_row.max()) + 1, generator=g) < 0.5
    for of_row, allow in ((of_row, "all"), (shuffled, "all"), (of_row, "docs"), (shuffled, "rows")):
        allowed = {"all": None, "docs": some_docs[of_row], "rows": torch.rand(n, generator=g) < 0.8}[allow]
        groups, completed = Groups.of(of_row), 0
        for seed in range(6):
            q = query(arrays.codec, x, 10, seed)
            exact = stages.exact_scores(q, arrays, torch.arange(n), kernels="torch")
            masked = exact if allowed is None else exact.masked_fill(~allowed, float("-inf"))
            best = torch.full((int(of_row.max()) + 1,), float("-inf")).scatter_reduce(0, of_row, masked, "amax")
            tr = []
            rows, scores = plaid.search(q, arrays, 10, SearchConfig(ncells=1, ndocs=16), groups=groups, trace=tr,
                                        allowed=allowed)
            assert tr[0].stage2 is not None and not tr[0].exhaustive
            docs = of_row[rows]
            assert len(set(docs.tolist())) == 10
            assert allowed is None or bool(allowed[rows].all())
            assert torch.allclose(scores, best[docs], atol=1e-5) and torch.allclose(exact[rows], scores, atol=1e-5)
            assert bool((scores[:-1] >= scores[1:]).all())
            completed += tr[0].completed
        assert completed > 0, allow


def test_plaid_widens_when_the_rows_scored_hold_too_few_documents():
    """With groups (passages), a plan sized for k documents that scores rows holding fewer than k documents
    widens (the rest of stage 2's rows, then every row) and still returns the k best documents, each as its best
    row: the same as exhaustive search grouped."""
    from colbert_retriever import SearchConfig
    from colbert_retriever.search import plaid

    from .test_numba import clustered_arrays, query

    from colbert_retriever.search import stages

    arrays, x, _ = clustered_arrays(n_docs=3000, cuts=(0.6,))
    n = arrays.num_docs
    for seed in range(4):
        q = query(arrays.codec, x, 10, seed)
        # the 200 best rows belong to 5 documents of 40 rows; every other row is a document of its own
        order = torch.argsort(stages.exact_scores(q, arrays, torch.arange(n), kernels="torch"), descending=True)
        groups = torch.empty(n, dtype=torch.long)
        groups[order[:200]] = torch.arange(200) // 40
        groups[order[200:]] = 5 + torch.arange(n - 200)
        tr = []
        got = plaid.search(q, arrays, 20, SearchConfig(ncells=4, ndocs=64), groups=groups, rows_per_group=1.0,
                           trace=tr)
        ref = plaid.search(q, arrays, 20, SearchConfig(exhaustive=True), groups=groups)
        assert tr[0].widened and got[0].numel() == 20
        assert len(set(groups[got[0]].tolist())) == 20  # k distinct documents
        assert torch.allclose(got[1], ref[1], atol=1e-5)


def test_filter_operators_dotted_keys_and_missing_fields(tmp_path, tiny_model):
    """README's filter language: every operator, ``$and``/``$or``/``$not``, dotted keys into nested metadata, and a
    field a document lacks matching nothing but ``$exists: False``, ``$ne`` and ``$nin``."""
    metas = [{"n": 1, "tag": "a", "src": {"lang": "en", "year": 2020}}, {"n": 2, "tag": "b", "src": {"lang": "fr"}},
             {"n": 3, "tag": "a"}, {"n": 4, "src": {"lang": "en", "year": 2024}}]
    idx = Index.build(tmp_path / "f", make_corpus(4, seed=9), ids=["w", "x", "y", "z"], metadatas=metas,
                      model=tiny_model, show_progress=False)
    cases = [({"tag": "a"}, "wy"), ({"n": {"$eq": 2}}, "x"), ({"n": {"$ne": 2}}, "wyz"), ({"n": {"$gt": 2}}, "yz"),
             ({"n": {"$gte": 2}}, "xyz"), ({"n": {"$lt": 2}}, "w"), ({"n": {"$lte": 2}}, "wx"),
             ({"tag": {"$in": ["b", "c"]}}, "x"), ({"tag": {"$nin": ["b"]}}, "wyz"),  # z has no tag
             ({"tag": {"$exists": False}}, "z"), ({"src": {"$exists": True}}, "wxz"),
             ({"src.lang": "en"}, "wz"), ({"src.year": {"$gte": 2021}}, "z"), ({"src.year": {"$exists": True}}, "wz"),
             ({"$and": [{"tag": "a"}, {"n": {"$gt": 1}}]}, "y"), ({"$or": [{"n": 4}, {"src.lang": "fr"}]}, "xz"),
             ({"$not": {"n": 2}}, "wyz"), ({"missing": 1}, ""), ({"missing": {"$gte": 0}}, ""),
             ({"missing": {"$ne": 1}}, "wxyz")]
    for f, want in cases:
        for exhaustive in (False, True):
            assert sorted(h.id for h in idx.search("alpha", k=10, filter=f, exhaustive=exhaustive)) == list(want), f
        assert idx.ids(filter=f) == list(want), f


def test_documents_stored_as_passages_size_the_stages_rounding_up():
    from colbert_retriever.search.plaid import group_rows

    assert group_rows(10, 1.25, 1000) == 13 + 10  # 12.5 rows: rounded up, not truncated
    assert group_rows(10, 1.0, 1000) == 20 and group_rows(10, 3.01, 1000) == 31 + 10
    assert group_rows(10, 4.0, 25) == 25  # never more than the allowed rows
