"""The replica's batched search without HTTP or Ray: one forward pass for the batch, each request answered as
``Index.search`` answers it, a bad request failing alone."""

from colbert_retriever import InvalidArgument
from colbert_retriever.serve.backend import Backend

from ..distributed._ranking import assert_same_ranking


def test_batch_answers_each_request_as_the_index(built_index, corpus_200):
    backend = Backend(built_index, "index")
    requests = [([corpus_200[0]], {"k": 3}), ([corpus_200[1], corpus_200[2]], {"k": 3}),
                ([corpus_200[3]], {"k": 5, "filter": {"group": 1}}), (["   "], {"k": 3}),
                ([corpus_200[4]], {"k": 3, "mode": "nope"}), ([corpus_200[5]], {"k": 0})]
    out = backend.search_many(requests)
    for (queries, params), got in zip(requests[:3], out[:3]):
        want = built_index.search(queries, **params)
        assert len(got) == len(queries)
        for a, b in zip(got, want):
            assert_same_ranking([(h.id, h.score) for h in a], [(h.id, h.score) for h in b], tol=1e-4)
    assert all(h.metadata["group"] == 1 for h in out[2][0])
    for bad in out[3:]:
        assert isinstance(bad, InvalidArgument)
    health = backend.health()
    assert health["batches"] == 1 and health["queries"] == 5  # the blank query and the unknown mode: not encoded
    assert health["documents"] == len(built_index)


def test_bm25_requests_need_no_encoding(built_index):
    built_index.add_lexical()
    backend = Backend(built_index, "index")
    out = backend.search_many([(["python kernel"], {"k": 2, "mode": "bm25"})])
    assert out[0][0] == built_index.search(["python kernel"], k=2, mode="bm25")[0]
    assert backend.health()["batches"] == 0
