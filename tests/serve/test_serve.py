"""The HTTP server (Ray Serve, on 127.0.0.1) over an index: the API and its OpenAPI description, searches equal
to the index's, concurrent searches batched into one forward pass, writes, 4xx with the library's one-line
message, the client, and both adapters given the server's URL."""

import http.client
import json
import socket
import threading

import pytest

from colbert_retriever import CodecConfig, Index, InvalidArgument
from colbert_retriever.serve import RemoteIndex

from ..conftest import make_corpus
from ..distributed._ranking import assert_same_ranking

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")
N = 160


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, colbert_ai_ckpt):
    import ray

    from colbert_retriever.serve import start, stop

    path = tmp_path_factory.mktemp("served") / "index"
    texts = make_corpus(N, seed=12)
    Index.build(path, texts, ids=[f"d{i}" for i in range(N)], metadatas=[{"g": i % 4} for i in range(N)],
                model=str(colbert_ai_ckpt), codec_config=CodecConfig(num_centroids=32), lexical=True,
                show_progress=False, pool_factor=1).close()  # self-retrieval with the random tiny model: unpooled
    owned = not ray.is_initialized()
    if owned:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=80 * 1024 * 1024)
    url = start(path, port=free_port(), max_batch_size=32, batch_wait_ms=30)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url, path, texts
    finally:
        stop(None)
        if owned:
            ray.shutdown()


@pytest.fixture(scope="module")
def local(served):
    with Index.open(served[1]) as index:  # the model as the server loads it (load_model, the recorded precision)
        yield index


def _raw(url, method, route, body=None):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, route, body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload) if payload else None


def test_health_and_openapi(served):
    url, _, _ = served
    health = RemoteIndex(url).health()
    assert health["status"] == "ok" and health["kind"] == "index" and health["documents"] == N and health["lexical"]
    status, spec = _raw(url, "GET", "/openapi.json")
    assert status == 200 and spec["info"]["title"] == "colbert-retriever"
    assert {"/health", "/search", "/add", "/upsert", "/delete", "/get", "/ids"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["SearchBody"]["properties"]
    assert {"query", "queries", "k", "mode", "filter", "ids"} <= set(props)


@pytest.mark.parametrize("mode", ["colbert", "bm25", "hybrid", "bm25_rerank"])
def test_search_equals_the_index(served, local, mode):
    url, _, texts = served
    remote = RemoteIndex(url)
    for kwargs in ({}, {"filter": {"g": 1}}, {"ids": [f"d{i}" for i in range(0, N, 3)]}):
        for q in texts[:4]:
            got = remote.search(q, k=8, mode=mode, depth=N, **kwargs)
            want = local.search(q, k=8, mode=mode, depth=N, **kwargs)
            assert_same_ranking([(h.id, h.score) for h in got], [(h.id, h.score) for h in want], tol=1e-4,
                                what=f"{mode} {kwargs}")
            assert all(h.text and h.relevance is not None for h in got)
    many = remote.search(texts[:3], k=2)
    assert len(many) == 3 and all(len(h) == 2 for h in many)


def test_concurrent_searches_are_batched(served, local):
    url, _, texts = served
    remote = RemoteIndex(url)
    before = remote.health()
    n = 24
    barrier, results = threading.Barrier(n), [None] * n

    def one(i):
        barrier.wait()
        results[i] = remote.search(texts[i], k=5)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    after = remote.health()
    assert after["queries"] - before["queries"] == n
    assert after["batches"] - before["batches"] < n  # several searches shared a forward pass
    for i, hits in enumerate(results):
        want = local.search(texts[i], k=5)
        assert_same_ranking([(h.id, h.score) for h in hits], [(h.id, h.score) for h in want], tol=1e-4)


def test_writes_through_the_server(served):
    url, _, _ = served
    remote = RemoteIndex(url)
    g = remote.generation
    assert remote.add(["a brand new document about comets"], ids=["new"], metadatas=[{"g": 7}]) == ["new"]
    assert len(remote) == N + 1 and remote.generation == g + 1
    with pytest.raises(InvalidArgument, match=r"ids already in the index: \['new'\]"):
        remote.add(["again"], ids=["new"])
    remote.upsert(["a replaced document"], ids=["new"])
    assert remote.get(["new", "missing"])[0].text == "a replaced document"
    assert remote.get("new")[0].metadata == {"g": 7}
    assert remote.ids(filter={"g": 7}) == ["new"]
    assert remote.search("a replaced document", k=1, ids=["new"])[0].id == "new"
    assert remote.delete(["new"]) == 1 and len(remote) == N


def test_bad_requests_get_4xx_with_one_line(served):
    url, _, _ = served
    cases = [({"query": "x", "k": 0}, 400, "k must be > 0, got 0"),
             ({"query": "x", "mode": "nope"}, 400, "mode must be one of"),
             ({"query": "   "}, 400, "empty"),
             ({"query": "x", "filter": {"g": {"$bad": 1}}}, 400, "unknown filter operator '$bad'"),
             ({"k": 3}, 400, "give either 'query'"),
             ({"query": "x", "k": "ten"}, 422, "k: "),
             ({"query": "x", "colour": "red"}, 422, "colour")]
    for body, status, text in cases:
        got, payload = _raw(url, "POST", "/search", body)
        assert got == status, (body, got, payload)
        assert text in payload["error"] and "\n" not in payload["error"], payload
    got, payload = _raw(url, "POST", "/upsert", {"texts": ["x"], "ids": ["a", "b"]})
    assert got == 400 and payload["type"] == "InvalidArgument"
    assert _raw(url, "POST", "/delete", {})[0] == 400


def test_adapters_take_the_url(served):
    from langchain_core.documents import Document

    from colbert_retriever.integrations.langchain import ColBERTRetriever, ColBERTVectorStore
    from colbert_retriever.integrations.llama_index import ColBERTRetriever as LlamaRetriever

    url, _, texts = served
    docs = ColBERTRetriever(index_path=url, k=3, search_kwargs={"mode": "hybrid"}).invoke(texts[2])
    assert len(docs) == 3 and docs[0].id == "d2" and docs[0].metadata["rank"] == 1
    store = ColBERTVectorStore(url)
    assert store.similarity_search(texts[5], k=2)[0].id == "d5"
    ids = store.add_documents([Document(page_content="langchain added this", metadata={"g": 9}, id="lc-1")])
    assert ids == ["lc-1"] and store.get_by_ids(["lc-1"])[0].page_content == "langchain added this"
    assert store.delete(["lc-1"]) is True
    nodes = LlamaRetriever(index_path=url, similarity_top_k=4).retrieve(texts[7])
    assert len(nodes) == 4 and nodes[0].node.node_id == "d7"
