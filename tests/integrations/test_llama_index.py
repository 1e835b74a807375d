import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, QueryBundle, SimpleDirectoryReader  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator, MetadataFilter,  # noqa: E402
                                                  MetadataFilters)

from colbert_retriever import InvalidArgument  # noqa: E402
from colbert_retriever.integrations.llama_index import ColBERTRerank, ColBERTRetriever, to_colbert_filter  # noqa: E402

from .conftest import DOCS  # noqa: E402


def nodes():
    return [TextNode(id_=f"n{i}", text=t, metadata=m) for i, (t, m) in enumerate(DOCS)]


def test_from_nodes_ids_metadata_filters(tmp_path, default_model):
    r = ColBERTRetriever.from_nodes(nodes(), tmp_path / "i", model=default_model, similarity_top_k=2)
    res = r.retrieve("capital of Germany")
    assert isinstance(res[0], NodeWithScore) and res[0].node.node_id == "n1"
    assert res[0].node.metadata["source"] == "geo.md" and res[0].score >= res[1].score
    r.filters = MetadataFilters(filters=[MetadataFilter(key="source", value="music.txt")])
    assert {n.node.node_id for n in r.retrieve("capital of Germany")} == {"n2", "n3"}
    r.filters = MetadataFilters(filters=[MetadataFilter(key="year", value=2021, operator=FilterOperator.GT),
                                         MetadataFilter(key="source", value="ir.md")],
                                condition=FilterCondition.OR)
    r.similarity_top_k = 10
    assert {n.node.node_id for n in r.retrieve("anything")} == {"n3", "n4", "n5"}
    r.filters = MetadataFilters(filters=[MetadataFilter(key="source", value="geo", operator=FilterOperator.TEXT_MATCH)])
    with pytest.raises(InvalidArgument, match="not supported"):
        r.retrieve("x")
    r.filters = None
    r.insert_nodes([TextNode(id_="extra", text="Rome is the capital of Italy.")])
    assert r.retrieve("capital of Italy")[0].node.node_id == "extra"
    assert r.delete_nodes(["extra"]) == 1


def test_filter_translation():
    f = MetadataFilters(filters=[MetadataFilter(key="a", value=[1, 2], operator=FilterOperator.IN),
                                 MetadataFilters(filters=[MetadataFilter(key="b", value=3, operator=FilterOperator.LTE)],
                                                 condition=FilterCondition.NOT)])
    assert to_colbert_filter(f) == {"$and": [{"a": {"$in": [1, 2]}}, {"$not": {"$and": [{"b": {"$lte": 3}}]}}]}


def test_directory_reader_splitter_query_engine(tmp_path, default_model):
    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    for i, (t, _) in enumerate(DOCS):
        (docs_dir / f"note{i}.{'md' if i % 2 else 'txt'}").write_text(f"# Note {i}\n\n{t}\n\n" + "Filler sentence. " * 30)
    documents = SimpleDirectoryReader(str(docs_dir)).load_data()
    assert len(documents) == len(DOCS)
    r = ColBERTRetriever.from_documents(documents, tmp_path / "i", model=default_model, similarity_top_k=2,
                                        transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0)])
    top = r.retrieve("string instrument played with a bow")[0]
    assert top.node.metadata["file_name"] == "note2.txt" and top.node.metadata["ref_doc_id"]
    engine = RetrieverQueryEngine.from_args(r, llm=MockLLM(), node_postprocessors=[ColBERTRerank(model=default_model,
                                                                                                  top_n=1)])
    response = engine.query("Which instrument has 88 keys?")
    assert len(response.source_nodes) == 1
    assert response.source_nodes[0].node.metadata["file_name"] == "note3.md"
    assert isinstance(str(response), str)


def test_rerank_postprocessor(default_model):
    rr = ColBERTRerank(model=default_model, top_n=2)
    out = rr.postprocess_nodes([NodeWithScore(node=n, score=0.0) for n in nodes()],
                               query_bundle=QueryBundle("parse JSON in Python"))
    assert len(out) == 2 and out[0].node.node_id == "n4" and out[0].score >= out[1].score
    with pytest.raises(InvalidArgument):
        rr.postprocess_nodes([NodeWithScore(node=nodes()[0])], query_bundle=None)
