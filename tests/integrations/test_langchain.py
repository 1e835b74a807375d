import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from colbert_retriever import InvalidArgument, InvalidType  # noqa: E402
from colbert_retriever.integrations.langchain import ColBERTRerank, ColBERTRetriever  # noqa: E402

from .conftest import DOCS  # noqa: E402

_STATE = {}


@pytest.fixture(autouse=True)
def _share(lc_index_path, default_model):
    _STATE["path"], _STATE["model"] = lc_index_path, default_model


class TestColBERTRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return ColBERTRetriever

    @property
    def retriever_constructor_params(self):
        return {"index_path": str(_STATE["path"]), "model": _STATE["model"], "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "what is the capital of France?"


def lc_docs():
    return [Document(page_content=t, metadata=m, id=f"lc{i}") for i, (t, m) in enumerate(DOCS)]


def test_from_documents_search_filter_add_delete(tmp_path, default_model):
    r = ColBERTRetriever.from_documents(lc_docs(), index_path=tmp_path / "i", model=default_model, k=2)
    docs = r.invoke("capital of France")
    assert len(docs) == 2 and docs[0].id == "lc0"
    assert docs[0].metadata["source"] == "geo.md" and docs[0].metadata["rank"] == 1
    assert docs[0].metadata["score"] >= docs[1].metadata["score"]
    docs = r.invoke("capital city", k=3, filter={"source": "music.txt"})
    assert [d.metadata["source"] for d in docs] == ["music.txt", "music.txt"]
    docs = r.invoke("capital city", k=10, filter={"year": {"$gte": 2021}})
    assert {d.id for d in docs} == {"lc1", "lc3", "lc4"}
    added = r.add_documents([Document(page_content="Madrid is the capital of Spain.", metadata={"source": "geo.md"},
                                      id="es")])
    assert added == ["es"] and r.invoke("capital of Spain", k=1)[0].id == "es"
    assert r.delete(["es"]) == 1
    assert "es" not in {d.id for d in r.invoke("capital of Spain", k=10)}
    r2 = ColBERTRetriever.from_index(tmp_path / "i", model=default_model, k=1)
    assert r2.invoke("piano keys")[0].id == "lc3"


async def test_async(tmp_path, default_model):
    r = ColBERTRetriever.from_documents(lc_docs(), index_path=tmp_path / "i", model=default_model)
    docs = await r.ainvoke("violin bow", k=1)
    assert docs[0].id == "lc2"


def test_bad_documents(tmp_path, default_model):
    docs = lc_docs() + [Document(page_content="   ", metadata={})]
    r = ColBERTRetriever.from_documents(docs, index_path=tmp_path / "i", model=default_model)
    assert len(r.index) == len(DOCS)  # the empty one is skipped
    with pytest.raises(InvalidArgument, match="every document has empty"):
        ColBERTRetriever.from_documents([Document(page_content="")], index_path=tmp_path / "j", model=default_model)
    with pytest.raises(InvalidArgument, match="duplicate ids"):
        ColBERTRetriever.from_documents([Document(page_content="a b", id="x"), Document(page_content="c d", id="x")],
                                        index_path=tmp_path / "k", model=default_model)
    with pytest.raises(InvalidType, match="not JSON-serialisable"):
        ColBERTRetriever.from_documents([Document(page_content="a b", metadata={"f": {1, 2}})],
                                        index_path=tmp_path / "l", model=default_model)
    with pytest.raises(InvalidArgument, match="unknown filter operator"):
        r.invoke("x", filter={"year": {"$like": "20%"}})




def test_reranker(default_model):
    from langchain_core.retrievers import BaseRetriever

    class ListRetriever(BaseRetriever):
        docs: list

        def _get_relevant_documents(self, query, *, run_manager):
            return self.docs

    base = ListRetriever(docs=lc_docs())
    rr = ColBERTRerank(model=default_model, top_n=2)
    out = rr.compress_documents(base.invoke("x"), "how do I parse JSON in Python")
    assert len(out) == 2 and out[0].id == "lc4" and out[0].metadata["rank"] == 1
    # LCEL: retriever | reranker
    from langchain_core.runnables import RunnableLambda

    chain = base | RunnableLambda(lambda docs: rr.compress_documents(docs, "violin"))
    assert chain.invoke("violin")[0].id == "lc2"


def test_langchain_text_splitter_loader_output(tmp_path, default_model):
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    text = "\n\n".join(f"Section {i}. " + t for i, (t, _) in enumerate(DOCS * 3))
    splitter = RecursiveCharacterTextSplitter(chunk_size=120, chunk_overlap=10)
    chunks = splitter.create_documents([text], metadatas=[{"source": "handbook.txt"}])
    assert len(chunks) > 5
    r = ColBERTRetriever.from_documents(chunks, index_path=tmp_path / "i", model=default_model, k=3)
    docs = r.invoke("string instrument played with a bow")
    assert "violin" in docs[0].page_content and docs[0].metadata["source"] == "handbook.txt"


# ------------------------------------------------------------------------------------------- vector store
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from colbert_retriever.integrations.langchain import ColBERTTextSplitter, ColBERTVectorStore  # noqa: E402


class TestColBERTVectorStoreStandard(VectorStoreIntegrationTests):
    """LangChain's standard vector-store suite (sync and async), each test on a new empty store."""

    @pytest.fixture
    def vectorstore(self, tmp_path, default_model):
        store = ColBERTVectorStore(tmp_path / "store", model=default_model)
        assert store.index is None  # empty: no index folder until the first add
        yield store


def long_text(n_sentences: int = 230) -> str:
    words = ["river", "mountain", "harbour", "lantern", "meadow", "glacier", "orchard", "canyon", "valley", "forest"]
    body = " ".join(f"Sentence {i} mentions the {words[i % 10]} near town {i}." for i in range(n_sentences))
    return body + " The final sentence reveals the secret password tangerine-zeppelin."


def test_vectorstore_upsert_filter_threshold_and_retriever(tmp_path, default_model):
    store = ColBERTVectorStore.from_documents(lc_docs(), index_path=tmp_path / "s", model=default_model)
    assert store.similarity_search("capital of France", k=1)[0].id == "lc0"
    # metadata come back exactly as given (no score/rank mixed in)
    assert store.get_by_ids(["lc3", "missing", "lc0"]) == [lc_docs()[3], lc_docs()[0]]
    scored = store.similarity_search_with_relevance_scores("capital of France", k=6)
    assert all(0.0 <= s <= 1.0 for _, s in scored) and scored[0][1] > scored[-1][1]
    thr = (scored[0][1] + scored[1][1]) / 2
    assert [d.id for d, _ in store.similarity_search_with_relevance_scores("capital of France", k=6,
                                                                           score_threshold=thr)] == ["lc0"]
    # upsert: same id, new text and metadata
    store.add_documents([Document(page_content="Lyon is a city in France known for food.", metadata={"v": 2},
                                  id="lc0")])
    assert store.get_by_ids(["lc0"])[0].metadata == {"v": 2} and len(store.index) == len(DOCS)
    # LangChain's retriever conventions
    r = store.as_retriever(search_kwargs={"k": 2, "filter": {"source": "music.txt"}})
    assert {d.id for d in r.invoke("instrument")} == {"lc2", "lc3"}
    r = store.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99, "k": 3})
    assert r.invoke("capital of Germany") == []
    with pytest.raises(InvalidArgument, match="mmr"):
        store.as_retriever(search_type="mmr").invoke("capital")
    with pytest.raises(InvalidArgument, match="unknown search argument"):
        store.similarity_search("capital", k=2, fetch_kk=3)
    # delete by filter and by id
    assert store.delete(filter={"source": "geo.md"}) is True
    assert "lc1" not in store.index.ids() and store.delete(["nope"]) is True  # succeeded (LangChain: False = failed)
    reopened = ColBERTVectorStore(tmp_path / "s", model="default")
    assert reopened.model is default_model or reopened.model.identity == default_model.identity
    assert sorted(reopened.index.ids()) == sorted(store.index.ids())


def test_vectorstore_long_text_is_split_not_truncated(tmp_path, default_model):
    text = long_text()
    assert default_model.tokenizer.count_tokens([text])[0] > 2000
    store = ColBERTVectorStore(tmp_path / "s", model=default_model)
    assert store.add_texts([text, "A short note about apples."], [{"src": "long"}, {"src": "short"}],
                           ids=["long", "short"]) == ["long", "short"]
    assert store.get_by_ids(["long"]) == [Document(id="long", page_content=text, metadata={"src": "long"})]
    assert store.index.metadata["counts"]["live"] > 8 and len(store.index) == 2  # passages, one document
    top = store.similarity_search("secret password tangerine-zeppelin", k=2)
    assert [d.id for d in top] == ["long", "short"]  # each document once
    assert "tangerine-zeppelin" in top[0].page_content and len(top[0].page_content) < len(text) / 4
    # replacing or deleting the text replaces or deletes every passage
    store.add_texts(["Now a short text."], ids=["long"])
    assert [d.page_content for d in store.get_by_ids(["long"])] == ["Now a short text."]
    assert store.index.metadata["counts"]["live"] == 2
    store.add_texts([text], ids=["long"])
    assert store.delete(["long"]) and store.index.ids() == ["short"] and store.index.metadata["counts"]["live"] == 1
    with pytest.raises(InvalidArgument, match="exceed"):
        ColBERTVectorStore(tmp_path / "e", model=default_model, long_texts="error").add_texts([text])


def test_retriever_search_kwargs_and_bad_queries(lc_index_path, default_model):
    r = ColBERTRetriever(index_path=str(lc_index_path), model=default_model,
                         search_kwargs={"k": 2, "filter": {"source": "music.txt"}})
    assert [d.metadata["source"] for d in r.invoke("capital")] == ["music.txt", "music.txt"]
    assert len(r.invoke("capital", k=1)) == 1
    r = ColBERTRetriever(index_path=str(lc_index_path), model=default_model,
                         search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.0, "k": 3})
    assert len(r.invoke("capital")) == 3
    # pydantic wraps the constructor's error in a ValidationError (a ValueError) carrying our message
    with pytest.raises(ValueError, match="mmr"):
        ColBERTRetriever(index_path=str(lc_index_path), model=default_model, search_type="mmr")
    with pytest.raises(ValueError, match="unknown search argument"):
        ColBERTRetriever(index_path=str(lc_index_path), model=default_model, search_kwargs={"fetch_k": 3})
    with pytest.warns(DeprecationWarning, match="index_path"):  # the old spelling still works
        r = ColBERTRetriever(index=str(lc_index_path), model="default")
    for bad in ({"question": "capital"}, ["capital"]):
        with pytest.raises(InvalidType, match="query must be a string"):
            r.invoke(bad)


def test_user_score_key_is_not_overwritten(tmp_path, default_model):
    docs = [Document(page_content="Grades: the essay got an A+.", metadata={"score": "A+"}, id="g"),
            Document(page_content="The weather is sunny.", metadata={}, id="w")]
    r = ColBERTRetriever.from_documents(docs, index_path=tmp_path / "i", model=default_model)
    got = {d.id: d.metadata for d in r.invoke("essay grade", k=2)}
    assert got["g"]["score"] == "A+" and isinstance(got["w"]["score"], float)
    rr = ColBERTRerank(model="default", top_n=2)
    assert rr.model is default_model or rr.model.identity == default_model.identity
    assert {d.id: d.metadata["score"] for d in rr.compress_documents(docs, "essay")}["g"] == "A+"


def test_retriever_from_documents_splits_long_documents(tmp_path, default_model):
    doc = Document(page_content=long_text(), metadata={"source": "long.txt"}, id="L")
    r = ColBERTRetriever.from_documents([doc] + lc_docs(), index_path=tmp_path / "i", model="default", k=1)
    top = r.invoke("secret password tangerine-zeppelin")[0]
    assert top.id == "L" and "tangerine-zeppelin" in top.page_content and len(top.page_content) < 2000


def test_text_splitter(default_model):
    sp = ColBERTTextSplitter(default_model, chunk_size=64, chunk_overlap=8, add_start_index=True)
    text = long_text(30)
    chunks = sp.split_documents([Document(page_content=text, metadata={"a": 1})])
    assert len(chunks) > 3
    assert all(default_model.tokenizer.count_tokens([c.page_content])[0] <= 64 for c in chunks)
    for c in chunks:
        assert text[c.metadata["start_index"]:].startswith(c.page_content)
    assert chunks[-1].page_content.endswith("tangerine-zeppelin.")


def test_vectorstore_hybrid(tmp_path, default_model):
    store = ColBERTVectorStore.from_documents(lc_docs(), index_path=tmp_path / "s", model=default_model, lexical=True)
    assert store.index.has_lexical
    assert store.similarity_search("json.loads", k=1, mode="bm25")[0].id == "lc4"
    hits = store.similarity_search("capital city", k=3, mode="hybrid", filter={"source": "geo.md"})
    assert sorted(d.id for d in hits) == ["lc0", "lc1"]  # the filter acts on both sides: only 2 match
    r = store.as_retriever(search_kwargs={"k": 2, "mode": "hybrid", "fusion": "normalized"})
    assert len(r.invoke("piano keys")) == 2 and r.invoke("piano keys")[0].id == "lc3"
    # relevance is 0..1 in every mode: a threshold works in hybrid mode too
    scored = store.similarity_search_with_relevance_scores("piano keys", k=4, mode="hybrid")
    assert all(0.0 <= s <= 1.0 for _, s in scored) and scored[0][1] >= scored[-1][1]
    assert len(store.similarity_search("piano keys", k=4, mode="hybrid", score_threshold=scored[0][1])) == 1
    retriever = ColBERTRetriever(index=store.index, search_kwargs={"mode": "bm25_rerank", "k": 1})
    assert retriever.invoke("violin bow")[0].id == "lc2"
    # an existing store gains the lexical side when asked
    plain = ColBERTVectorStore.from_documents(lc_docs(), index_path=tmp_path / "p", model=default_model)
    assert not plain.index.has_lexical
    assert ColBERTVectorStore(tmp_path / "p", model=default_model, lexical=True).index.has_lexical


def test_rerunning_ingestion_is_idempotent(tmp_path, default_model):
    """Re-running the same from_documents (documents without ids, as a loader and splitter give them) over the
    same folder leaves the index as one run left it: the same ids, count and top hits (ids are derived from
    text and metadata; an existing index is upserted, unchanged documents skipped)."""
    from colbert_retriever.integrations.langchain import document_id

    chunks = [Document(page_content=t, metadata=m) for t, m in DOCS] + [Document(page_content=DOCS[0][0],
                                                                                 metadata=DOCS[0][1])]  # a repeat
    runs = []
    for _ in range(2):
        store = ColBERTVectorStore.from_documents(chunks, index_path=tmp_path / "s", model=default_model)
        runs.append((sorted(store.index.ids()), len(store.index), store.index.generation,
                     [d.id for d in store.similarity_search("capital of France", k=3)]))
    assert runs[0][:2] == runs[1][:2] and runs[0][3] == runs[1][3] and runs[1][1] == len(DOCS) + 1
    assert runs[1][2] == runs[0][2]  # nothing was written the second time
    first = document_id(DOCS[0][0], DOCS[0][1])
    assert first in runs[0][0] and f"{first}-2" in runs[0][0]  # the repeat kept, under a suffixed id
    r1 = ColBERTRetriever.from_documents(chunks, index_path=tmp_path / "r", model=default_model)
    r2 = ColBERTRetriever.from_documents(chunks, index_path=tmp_path / "r", model=default_model)
    assert sorted(r1.index.ids()) == sorted(r2.index.ids()) == runs[0][0]
    with pytest.raises(InvalidArgument, match="already exists"):
        ColBERTVectorStore.from_documents(chunks, index_path=tmp_path / "s", model=default_model, if_exists="error")
    fresh = ColBERTVectorStore.from_documents(chunks[:2], index_path=tmp_path / "s", model=default_model,
                                              if_exists="overwrite")
    assert len(fresh.index) == 2


def test_reranker_scores_long_documents_whole(default_model):
    """A document longer than the model is scored by its best passage (not its first 256 tokens); the old
    name still works, with a deprecation warning."""
    text = long_text()
    docs = [Document(page_content=text, id="long"), Document(page_content="A short note about apples.", id="s")]
    rr = ColBERTRerank(model=default_model, top_n=2)
    out = rr.compress_documents(docs, "secret password tangerine-zeppelin")
    assert [d.id for d in out] == ["long", "s"] and out[0].page_content == text
    cut = ColBERTRerank(model=default_model, top_n=2, long_texts="truncate")
    assert cut.compress_documents(docs, "secret password tangerine-zeppelin")[0].metadata["score"] < \
        out[0].metadata["score"]
    from colbert_retriever.integrations.langchain import ColBERTReranker

    with pytest.warns(DeprecationWarning, match="ColBERTRerank"):
        ColBERTReranker(model=default_model)


# ============================================================================ LangChain's indexing API
NOTES = {
    "geo.md": "# Capitals\n\nParis is the capital of France.\n\n# Rivers\n\nThe Seine flows through Paris.",
    "music.md": "# Strings\n\nThe violin is played with a bow.\n\n# Keys\n\nA piano has 88 keys.",
    "code.md": "# JSON\n\njson.loads parses a JSON string.",
}


def load_markdown(folder):
    """A loader and splitter as a RAG pipeline has them: one Document per heading section, ``source`` = the file."""
    docs = []
    for f in sorted(folder.glob("*.md")):
        for section in f.read_text().split("\n\n# "):
            docs.append(Document(page_content=section.lstrip("# ").strip(), metadata={"source": f.name}))
    return docs


def test_langchain_indexing_api_syncs_a_changed_folder(tmp_path, default_model):
    """``langchain_core.indexing.index`` with a record manager: a re-run skips everything, an edited file's old
    chunk is replaced (incremental cleanup), a removed file's chunks are deleted (full cleanup), and a search for a
    renamed heading finds the new chunk only."""
    from langchain_core.indexing import InMemoryRecordManager, index

    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    store = ColBERTVectorStore(tmp_path / "idx", model=default_model)
    rm = InMemoryRecordManager(namespace="colbert/notes")
    rm.create_schema()

    def sync(cleanup):
        return index(load_markdown(folder), rm, store, cleanup=cleanup, source_id_key="source",
                     key_encoder="sha256")

    assert sync("incremental") == {"num_added": 5, "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
    assert sync("incremental") == {"num_added": 0, "num_updated": 0, "num_skipped": 5, "num_deleted": 0}
    generation = store.index.generation
    assert sync("full") == {"num_added": 0, "num_updated": 0, "num_skipped": 5, "num_deleted": 0}
    assert store.index.generation == generation  # nothing written

    (folder / "music.md").write_text(NOTES["music.md"].replace("# Keys\n\nA piano has 88 keys.",
                                                               "# Harpsichord\n\nA harpsichord plucks its strings."))
    assert sync("incremental") == {"num_added": 1, "num_updated": 0, "num_skipped": 4, "num_deleted": 1}
    hits = store.similarity_search("harpsichord", k=10)
    assert hits[0].page_content.startswith("Harpsichord") and len(hits) == 5
    assert not [d for d in hits if "piano" in d.page_content]  # the old chunk is gone, not merely outranked
    assert sorted(store.index.ids()) == sorted(rm.list_keys())

    (folder / "code.md").unlink()
    assert sync("full") == {"num_added": 0, "num_updated": 0, "num_skipped": 4, "num_deleted": 1}
    assert len(store.index) == 4 and not [d for d in store.similarity_search("json", k=10) if "JSON" in
                                          d.page_content]


def test_add_documents_takes_batch_size_and_delete_reports_success(tmp_path, default_model):
    store = ColBERTVectorStore(tmp_path / "idx", model=default_model, auto_recluster=False)
    ids = store.add_documents(lc_docs(), batch_size=4)  # what index() passes: 4 texts per atomic write
    assert ids == [d.id for d in lc_docs()] and len(store.index) == len(DOCS)
    assert store.index.generation == 2  # two writes: 4 + 2
    with pytest.raises(InvalidArgument, match="batch_size must be an integer >= 1"):
        store.add_texts(["x"], batch_size=0)
    with pytest.raises(InvalidArgument, match=r"unknown argument\(s\) \['embeddings'\]"):
        store.add_texts(["x"], embeddings=[[0.1]])
    assert store.delete(["lc0", "no-such-id"]) is True and "lc0" not in store.index.ids()


def test_adapter_errors_name_the_adapters_way(tmp_path, default_model):
    with pytest.raises(InvalidArgument, match="pass index_path='my_index'"):
        ColBERTVectorStore.from_documents(lc_docs(), "my_index", model=default_model)
    assert not (tmp_path / "my_index").exists()
    store = ColBERTVectorStore.from_documents(lc_docs(), index_path=tmp_path / "s", model=default_model)
    with pytest.raises(InvalidArgument) as e:
        store.similarity_search("capital", k=2, mode="hybrid")
    assert "ColBERTVectorStore(index_path, lexical=True)" in str(e.value) and "add_lexical" not in str(e.value)
    with pytest.raises(InvalidArgument, match=r"ColBERTVectorStore\(index_path, lexical=True\)"):
        store.as_retriever(search_kwargs={"mode": "bm25"}).invoke("capital")


def test_list_valued_metadata_filters(tmp_path, default_model):
    docs = [Document(page_content=t, metadata={"tags": tags}, id=f"t{i}") for i, (t, tags) in enumerate([
        ("Paris is the capital of France.", ["geo", "europe"]),
        ("A piano has 88 keys.", ["music"]),
        ("Berlin is the capital of Germany.", ["geo"]),
    ])]
    store = ColBERTVectorStore.from_documents(docs, index_path=tmp_path / "s", model=default_model)

    def ids(flt):
        return sorted(d.id for d in store.similarity_search("capital", k=10, filter=flt))

    assert ids({"tags": "geo"}) == ["t0", "t2"]  # equality on a list: it holds the value
    assert ids({"tags": {"$contains": "europe"}}) == ["t0"]
    assert ids({"tags": {"$in": ["music", "europe"]}}) == ["t0", "t1"]
    assert ids({"tags": {"$ne": "geo"}}) == ["t1"] and ids({"tags": {"$nin": ["geo", "music"]}}) == []
