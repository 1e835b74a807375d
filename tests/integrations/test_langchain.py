import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from colbert_retriever import InvalidArgument, InvalidType  # noqa: E402
from colbert_retriever.integrations.langchain import ColBERTReranker, ColBERTRetriever  # noqa: E402

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
        return {"index": str(_STATE["path"]), "model": _STATE["model"], "k": 4}

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
    rr = ColBERTReranker(model=default_model, top_n=2)
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
