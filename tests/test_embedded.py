"""Indexes of precomputed multi-vector embeddings: build, add, upsert, search, filters, reopen; validation that
names the document; lazy sequences read a document at a time; an index naming the model that made the
embeddings answers text queries like an index built from the texts."""

import numpy as np
import pytest
import torch

from colbert_retriever import IncompatibleModelError, Index, InvalidArgument, InvalidType, SearchConfig

from .conftest import assert_ranked_alike, make_corpus


def clustered(n_docs=600, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(40, dim, generator=g), dim=-1)
    docs = []
    for _ in range(n_docs):
        n = int(torch.randint(3, 30, (1,), generator=g))
        topics = torch.randint(0, 40, (n,), generator=g)
        docs.append(torch.nn.functional.normalize(centers[topics] + 0.15 * torch.randn(n, dim, generator=g), dim=-1))
    return docs


def planted_query(doc: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(doc[:8] + 0.02 * torch.randn(doc[:8].shape, generator=g), dim=-1)


def test_build_search_update_reopen(tmp_path):
    docs = clustered()
    mixed = [d if i % 2 else d.numpy().astype(np.float16) for i, d in enumerate(docs)]  # tensors and arrays
    ids = [f"p{i}" for i in range(len(docs))]
    metas = [{"page": i, "book": "a" if i < 300 else "b"} for i in range(len(docs))]
    texts = [f"page {i}" for i in range(len(docs))]
    idx = Index.build_from_embeddings(tmp_path / "i", mixed, ids, metas, texts, name="pylate-test",
                                      show_progress=False)
    assert len(idx) == 600 and idx.metadata["model"]["kind"] == "embeddings"
    assert idx.metadata["model"]["name"] == "pylate-test" and idx.metadata["model"]["encoder_config"]["dim"] == 64
    found = 0
    for i in range(0, 600, 60):
        hits = idx.search_embeddings(planted_query(docs[i], i)[None], k=5)[0]
        found += hits[0].id == f"p{i}"
        assert hits[0].metadata == metas[int(hits[0].id[1:])] and hits[0].text == f"page {hits[0].id[1:]}"
    assert found >= 9
    hits = idx.search_embeddings(planted_query(docs[10], 1)[None], k=5, filter={"book": "b"})[0]
    assert len(hits) == 5 and all(h.metadata["book"] == "b" for h in hits)
    with pytest.raises(InvalidArgument, match="search_embeddings"):
        idx.search("a text query", k=3)
    new = clustered(5, seed=9)
    idx.add_embeddings(new, ids=[f"n{i}" for i in range(5)])
    assert idx.search_embeddings(planted_query(new[2], 3)[None], k=1)[0][0].id == "n2"
    idx.add_embeddings([new[4]], ids=["p0"], on_conflict="replace")  # upsert: p0 now holds new[4]'s embeddings
    assert idx.get(["p0"])[0].metadata == metas[0]  # no metadata given: the old one stays
    assert {h.id for h in idx.search_embeddings(planted_query(new[4], 5)[None], k=2)[0]} == {"p0", "n4"}
    idx.delete(["p1"])
    idx.compact()
    reopened = Index.open(tmp_path / "i")  # no model named: the index opens on its embeddings alone
    assert len(reopened) == 604 and reopened.search_embeddings(planted_query(new[2], 3)[None], k=1)[0][0].id == "n2"
    again = Index.build_from_embeddings(tmp_path / "i", [new[1]], ids=["n1"], show_progress=False)  # upsert
    assert len(again) == 604


def test_model_named_at_build_answers_text_queries(tmp_path, tiny_model):
    """Embeddings made by a ColBERT model (here: its own document encodings), indexed with that model named,
    answer text queries: each text query is the model's query embeddings searched, and the answers are those of an
    index built from the texts up to the codec. The two builds encode in different batches, so their embeddings
    differ in last bits (how much depends on the CPU's instruction set) and their k-means differ: measured
    natively and capped to AVX2, top-5 overlap 0.99 over these 60 queries and shared hits' scores within 0.02."""
    texts = make_corpus(300, seed=3)
    embs = tiny_model.encode_documents(texts)
    from_embs = Index.build_from_embeddings(tmp_path / "e", embs, texts=texts, model=tiny_model, show_progress=False)
    from_texts = Index.build(tmp_path / "t", texts, model=tiny_model, show_progress=False)
    assert from_embs.metadata["model"]["identity"] == tiny_model.identity
    queries = make_corpus(60, seed=4)
    for q in queries[:5]:  # the text path is the model's query encoding, then the embeddings' search
        by_text = from_embs.search(q, k=5, exhaustive=True)
        by_emb = from_embs.search_embeddings(tiny_model.encode_queries([q]), k=5, config=SearchConfig(exhaustive=True))
        assert_ranked_alike(by_text, by_emb[0], 1e-4)
    overlap = 0
    for q in queries:
        a, b = from_embs.search(q, k=5, exhaustive=True), from_texts.search(q, k=5, exhaustive=True)
        overlap += len({h.id for h in a} & {h.id for h in b})
        codec_noise = 0.1  # on scores of ~12: MaxSim over 16 query tokens, each of a 2-bit reconstruction
        assert_ranked_alike(a, b, codec_noise)
    assert overlap / (5 * len(queries)) >= 0.95
    with pytest.raises(InvalidArgument, match="dim"):
        Index.build_from_embeddings(tmp_path / "x", clustered(3, dim=64), model=tiny_model, show_progress=False)


class Lazy:
    """A sequence that reads documents on demand (as a reader over files would) and counts the reads."""

    def __init__(self, docs):
        self.docs, self.reads = docs, 0

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, i):
        self.reads += 1
        return self.docs[i].numpy()


def test_lazy_sequences_are_read_a_document_at_a_time(tmp_path):
    lazy = Lazy(clustered(400))
    idx = Index.build_from_embeddings(tmp_path / "i", lazy, show_progress=False)
    assert len(idx) == 400 and lazy.reads <= 2 * 400 + 1  # the k-means sample's documents are not read again


@pytest.mark.parametrize("bad,exc,match", [
    ([torch.zeros(3)], InvalidArgument, r"embeddings\[0\] has shape \(3,\)"),
    ([torch.ones(2, 64), torch.ones(2, 32)], InvalidArgument, r"embeddings\[1\] has shape \(2, 32\)"),
    ([torch.ones(2, 64), torch.full((3, 64), float("nan"))], InvalidArgument, r"embeddings\[1\] holds NaN"),
    ([torch.ones(0, 64)], InvalidArgument, r"embeddings\[0\] has shape \(0, 64\)"),
    ([torch.ones(2, 64, dtype=torch.int64)], InvalidType, "expected floats"),
    ([np.ones((2, 64), dtype=np.int32)], InvalidType, "expected floats"),
    ([torch.ones(2, 6)], InvalidArgument, "multiple of 8"),  # 6 dims x 2 bits
    ([], InvalidArgument, "empty"),
    ("not a list", InvalidType, "sequence"),
])
def test_bad_embeddings_are_named_and_nothing_is_written(tmp_path, bad, exc, match):
    with pytest.raises(exc, match=match):
        Index.build_from_embeddings(tmp_path / "i", bad, show_progress=False)
    assert not (tmp_path / "i").exists()


def test_bad_document_deep_in_a_collection_stops_the_build(tmp_path):
    docs = clustered(300)
    docs[250] = torch.full((4, 64), float("inf"))
    with pytest.raises(InvalidArgument, match=r"embeddings\[250\] holds NaN or infinite"):
        Index.build_from_embeddings(tmp_path / "i", docs, show_progress=False)
    assert not (tmp_path / "i").exists()


def test_texts_and_lexical_arguments(tmp_path):
    docs = clustered(20)
    with pytest.raises(InvalidArgument, match="texts has 3 entries"):
        Index.build_from_embeddings(tmp_path / "i", docs, texts=["a", "b", "c"], show_progress=False)
    with pytest.raises(InvalidArgument, match="lexical=True needs texts"):
        Index.build_from_embeddings(tmp_path / "i", docs, lexical=True, show_progress=False)
    idx = Index.build_from_embeddings(tmp_path / "i", docs, texts=[f"page about {w}" for w in "abcdefghijklmnopqrst"],
                                      lexical=True, show_progress=False)
    assert idx.search("about q", k=1, mode="bm25")[0].id == "16"


def test_rows_are_normalised_and_a_text_encoder_can_be_added_at_open(tmp_path, tiny_model):
    """Rows are L2-normalised (scaling a document's embeddings changes nothing: cosine MaxSim), and
    ``Index.open(path, model=m)`` gives an embeddings-only index a text encoder of the same dim (another dim is
    refused by name)."""
    docs = [torch.nn.functional.normalize(torch.randn(n, 32, generator=torch.Generator().manual_seed(n)), dim=-1)
            for n in range(3, 43)]
    unit = Index.build_from_embeddings(tmp_path / "u", docs, show_progress=False)
    scaled = Index.build_from_embeddings(tmp_path / "s", [d * (1 + i) for i, d in enumerate(docs)], show_progress=False)
    for d in docs[:10]:
        q = d[:4][None]
        # normalising a scaled row rounds differently in the last bits, and the codecs train on those rows
        assert_ranked_alike(unit.search_embeddings(q, k=5)[0], scaled.search_embeddings(q, k=5)[0], 1e-3)
    with_text = Index.open(tmp_path / "u", model=tiny_model)
    hits = with_text.search("alpha beta", k=3)
    assert len(hits) == 3 and hits == sorted(hits, key=lambda h: -h.score)
    with pytest.raises(IncompatibleModelError, match="64-dimensional.*32-dimensional"):
        Index.open(Index.build_from_embeddings(tmp_path / "d64", clustered(30, dim=64), show_progress=False).path,
                   model=tiny_model)


def test_a_codec_given_is_the_one_used(tmp_path):
    """``codec=``: the index stores each document as that codec compresses it (a sharded index's shards and a
    single index of the same embeddings store the same rows); an existing index keeps its own codec."""
    from colbert_retriever import CodecConfig
    from colbert_retriever.codec.residual import ResidualCodec

    docs = clustered(80, dim=32, seed=3)
    config = CodecConfig(nbits=2, num_centroids=16)
    codec = ResidualCodec.fit(torch.cat(docs[40:]), config, 2000)  # trained on other documents than indexed
    idx = Index.build_from_embeddings(tmp_path / "i", docs[:40], name="given", codec=codec, codec_config=config,
                                      show_progress=False, pool_factor=1)
    Q = planted_query(docs[7], 1)
    hits = idx.search_embeddings(Q[None], k=40, config=SearchConfig(exhaustive=True))[0]
    codec = ResidualCodec.from_arrays(codec.arrays(), 2)  # centroids as stored: float16
    for h in hits[:10]:
        stored = codec.decompress(*codec.compress(docs[int(h.id)]))
        assert h.score == pytest.approx(float((Q @ stored.T).max(1).values.sum()), rel=1e-5, abs=1e-5)
    with pytest.raises(InvalidArgument, match="its own codec"):
        Index.build_from_embeddings(tmp_path / "i", docs[40:], codec=codec, codec_config=config, show_progress=False)
    with pytest.raises(InvalidType, match="codec must be a ResidualCodec"):
        Index.build_from_embeddings(tmp_path / "j", docs[:5], codec="codec.npy", show_progress=False)
    with pytest.raises(InvalidArgument, match="the codec given has nbits=2, dim=32; expected nbits=4"):
        Index.build_from_embeddings(tmp_path / "j", docs[:5], codec=codec, nbits=4, show_progress=False)
    assert not (tmp_path / "j").exists()  # refused before anything is written
