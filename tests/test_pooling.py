"""Token pooling (``indexing/pooling.py``): ceil(n / factor) rows per document, unit norms, Ward's clusters as
scipy cuts them, deterministic; factor 1 leaves the encoder alone; the factor is recorded in the index, later
writes (add, upsert, compact with re-encoding or re-training) pool alike, another factor is refused; long
documents are pooled per passage; precomputed embeddings are pooled too."""

import json
import math

import numpy as np
import pytest
import torch

from colbert_retriever import CodecConfig, Index, IndexFormatError, InvalidArgument, InvalidType
from colbert_retriever.indexing.ingest import prepare_rows
from colbert_retriever.indexing.pooling import (DEFAULT_POOL_FACTOR, PooledEncoder, cluster_labels, pool, pool_packed,
                                                pooled)
from colbert_retriever.store import layout

from .conftest import make_corpus
from .test_embedded import clustered, planted_query


def unit_rows(n, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)


def doclens(index) -> list[int]:
    off = index.snapshot().arrays.doc_offsets
    return (off[1:] - off[:-1]).tolist()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 181])
@pytest.mark.parametrize("factor", [1, 2, 3, 4, 7])
def test_shape_and_norms(n, factor):
    x = unit_rows(n, seed=n)
    y = pool(x, factor)
    assert y.shape == (math.ceil(n / factor), 32) and y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=1), torch.ones(y.shape[0]), atol=1e-5)
    if factor == 1:
        assert torch.equal(y, x)


def test_recovers_planted_clusters_in_first_token_order():
    """Tokens that are near-copies of 4 directions, interleaved: factor 3 on 12 tokens leaves 4 rows, each the
    normalised mean of one direction's copies, in the order the directions first appear."""
    dirs = unit_rows(4, seed=1)
    order = [2, 0, 2, 1, 3, 0, 1, 3, 2, 1, 0, 3]
    x = torch.nn.functional.normalize(dirs[order] + 0.01 * unit_rows(12, seed=2), dim=-1)
    y = pool(x, 3)
    expect = torch.stack([torch.nn.functional.normalize(x[[i for i, o in enumerate(order) if o == d]].mean(0), dim=0)
                          for d in (2, 0, 1, 3)])
    assert torch.allclose(y, expect, atol=1e-6)


def test_cut_matches_scipy_fcluster():
    """Without ties, cutting the dendrogram after n - m merges is scipy's ``fcluster(maxclust=m)`` partition."""
    from scipy.cluster.hierarchy import fcluster, linkage

    for seed in range(5):
        x = unit_rows(40, seed=seed).numpy().astype(np.float64)
        for m in (1, 7, 20, 39, 40):
            ours = cluster_labels(x, m)
            ref = fcluster(linkage(x, method="ward"), t=m, criterion="maxclust")
            assert len(set(ours)) == m
            pairs = {(a, b) for a, b in zip(ours, ref)}
            assert len(pairs) == m  # a bijection between the two labellings


def test_deterministic_and_ties_stable():
    x = unit_rows(50, seed=3)
    assert torch.equal(pool(x, 2), pool(x.clone(), 2))
    dup = torch.cat([x[:5], x[:5], x[:5]])  # exact duplicates: distance 0, many equal merge heights
    a, b = pool(dup, 3), pool(dup.clone(), 3)
    assert torch.equal(a, b) and torch.allclose(a, x[:5], atol=1e-6)


def test_packed_and_encoder_wrapper():
    docs = [unit_rows(n, seed=n) for n in (3, 10, 1, 8)]
    embs, lengths = pool_packed(torch.cat(docs), torch.tensor([3, 10, 1, 8]), 2)
    assert lengths.tolist() == [2, 5, 1, 4]
    assert torch.equal(embs[2:7], pool(docs[1], 2))
    marker = object()
    assert pooled(marker, 1) is marker and pooled(marker, None) is marker  # factor 1: no pooling code path
    with pytest.raises(InvalidArgument):
        PooledEncoder(marker, 1)


@pytest.mark.parametrize("bad,err", [(0, InvalidArgument), (-2, InvalidArgument), (1.5, InvalidType),
                                     (True, InvalidType), ("2", InvalidType)])
def test_bad_factor_refused(tmp_path, tiny_model, bad, err):
    with pytest.raises(err, match="pool_factor"):
        Index.build(tmp_path / "i", ["a b c"], model=tiny_model, pool_factor=bad, show_progress=False)
    with pytest.raises(err, match="pool_factor"):
        Index.build_from_embeddings(tmp_path / "e", [unit_rows(4)], pool_factor=bad, show_progress=False)
    assert not (tmp_path / "i").exists() and not (tmp_path / "e").exists()


def test_embeddings_index_pooled(tmp_path):
    docs = clustered(300, dim=64, seed=4)
    ids = [f"p{i}" for i in range(len(docs))]
    idx = Index.build_from_embeddings(tmp_path / "i", docs, ids, name="pooled", pool_factor=2, show_progress=False,
                                      codec_config=CodecConfig(nbits=2, num_centroids=64))
    assert idx.metadata["pooling"] == {"pool_factor": 2, "method": "ward"}
    assert doclens(idx) == [math.ceil(d.shape[0] / 2) for d in docs]
    assert idx.ids() == ids
    found = sum(idx.search_embeddings(planted_query(docs[i], i)[None], k=3)[0][0].id == f"p{i}"
                for i in range(0, 300, 30))
    assert found >= 9
    new = clustered(4, dim=64, seed=5)
    idx.add_embeddings(new, ids=[f"n{i}" for i in range(4)])  # pooled as the index records
    assert doclens(idx)[-4:] == [math.ceil(d.shape[0] / 2) for d in new]
    with pytest.raises(InvalidArgument, match="pool_factor=2"):
        idx.add_embeddings(new, ids=[f"m{i}" for i in range(4)], pool_factor=1)
    flat = Index.build_from_embeddings(tmp_path / "flat", docs, ids, name="flat", show_progress=False, pool_factor=1)
    assert flat.metadata["pooling"] == {"pool_factor": 1} and doclens(flat) == [d.shape[0] for d in docs]


def test_text_index_round_trip(tmp_path, tiny_model):
    """build, add, upsert, delete, compact (re-encoding and re-training from the stored rows), reopen: every
    document holds ceil(n / 2) rows of its n token embeddings throughout, long ones per passage."""
    texts = make_corpus(120, seed=3, min_words=6, max_words=16)
    long_text = " ".join(make_corpus(12, seed=4, min_words=8, max_words=10))  # > doc_maxlen=24: passages
    texts.append(long_text)
    ids = [f"d{i}" for i in range(len(texts))]

    def expected(rows_texts):
        _, lengths = tiny_model.encode_documents_packed(rows_texts)
        return [math.ceil(n / 2) for n in lengths.tolist()]

    path = tmp_path / "i"
    idx = Index.build(path, texts, ids=ids, model=tiny_model, pool_factor=2, show_progress=False,
                      codec_config=CodecConfig(nbits=2, num_centroids=32))
    rows = prepare_rows(tiny_model, ids, texts, [{}] * len(texts), "chunk")
    assert rows.ids.count("d120") > 1  # the long text is several passages, each pooled on its own
    assert doclens(idx) == expected(rows.texts)
    assert idx.metadata["pooling"]["pool_factor"] == 2
    hits = idx.search(texts[5], k=3)
    assert hits[0].id == "d5"

    new = make_corpus(6, seed=8, min_words=6, max_words=12)
    idx.add(new, ids=[f"n{i}" for i in range(6)])
    assert doclens(idx)[-6:] == expected(new)
    with pytest.raises(InvalidArgument, match="pool_factor=2"):
        idx.add(["other words here"], ids=["x"], pool_factor=3)
    changed = ["river mountain ocean forest city", "planet star galaxy comet physics gene"]
    idx.upsert(changed, ids=["d0", "d1"])
    assert doclens(idx)[-2:] == expected(changed)
    idx.delete(["d2", "d3"])
    with pytest.raises(InvalidArgument, match="pool_factor=2"):  # build onto it with another factor
        Index.build(path, ["a new text"], ids=["z"], model=tiny_model, pool_factor=4, show_progress=False)
    Index.build(path, ["a new text"], ids=["z"], model=tiny_model, show_progress=False)  # upsert, pooled by 2
    assert doclens(Index.open(path, model=tiny_model))[-1] == expected(["a new text"])[0]

    for recluster, reencode in ((False, None), (True, True), (True, False)):
        idx.compact(recluster=recluster, reencode=reencode)
        live_rows = [r.text for r in idx.get(idx.ids())]  # whole texts; re-chunk as the index did
        rows = prepare_rows(tiny_model, idx.ids(), live_rows, [{}] * len(live_rows), "chunk")
        assert doclens(idx) == expected(rows.texts), (recluster, reencode)
        assert idx.metadata["pooling"]["pool_factor"] == 2
    reopened = Index.open(path, model=tiny_model)
    assert reopened.metadata["pooling"]["pool_factor"] == 2 and reopened.search(new[2], k=1)[0].id == "n2"


def test_no_factor_builds_what_the_default_factor_builds(tmp_path, tiny_model):
    texts = make_corpus(60, seed=5)
    cfg = CodecConfig(nbits=2, num_centroids=16)
    a = Index.build(tmp_path / "a", texts, model=tiny_model, codec_config=cfg, show_progress=False)
    b = Index.build(tmp_path / "b", texts, model=tiny_model, codec_config=cfg, show_progress=False,
                    pool_factor=DEFAULT_POOL_FACTOR)
    assert a.metadata["pooling"] == b.metadata["pooling"] == {"pool_factor": 2, "method": "ward"}
    sa, sb = a.snapshot().arrays, b.snapshot().arrays
    assert torch.equal(sa.doc_offsets, sb.doc_offsets)
    assert torch.equal(sa.codes.full(), sb.codes.full()) and torch.equal(sa.residuals.full(), sb.residuals.full())


def test_metadata_entry(tmp_path):
    idx = Index.build_from_embeddings(tmp_path / "i", [unit_rows(6)] * 3, pool_factor=3, show_progress=False)
    meta_path = tmp_path / "i" / layout.METADATA
    d = json.loads(meta_path.read_text())
    assert d["pooling"] == {"pool_factor": 3, "method": "ward"}
    parsed = layout.IndexMeta.from_json(meta_path.read_text())
    assert parsed.pool_factor == 3
    del d["pooling"]  # an index written before pooling existed: factor 1
    assert layout.IndexMeta.from_json(json.dumps(d)).pool_factor == 1
    for bad in ({"pool_factor": 0}, {"pool_factor": 2}, {"pool_factor": "2", "method": "ward"}, [2]):
        d["pooling"] = bad
        with pytest.raises(IndexFormatError, match="pooling"):
            layout.IndexMeta.from_json(json.dumps(d))
    idx.close()


def test_cli_pool_factor(tmp_path, capsys):
    from colbert_retriever.cli.main import main

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(make_corpus(12, seed=11, min_words=8, max_words=12))))
    assert main(["index", str(data), str(tmp_path / "i"), "--quiet", "--pool-factor", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    meta = json.loads((tmp_path / "i" / layout.METADATA).read_text())
    assert meta["pooling"] == {"pool_factor": 2, "method": "ward"} and out["documents"] == 12
    assert main(["index", str(data), str(tmp_path / "j"), "--quiet", "--pool-factor", "0"]) == 2
    assert "--pool-factor" in capsys.readouterr().err and not (tmp_path / "j").exists()


def test_adapters_pass_pool_factor(tmp_path):
    """The LangChain store and retriever and the LlamaIndex index and retriever build pooled indexes when asked."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.documents import Document
    from llama_index.core.schema import TextNode

    from colbert_retriever.integrations.langchain import ColBERTRetriever as LCRetriever
    from colbert_retriever.integrations.langchain import ColBERTVectorStore
    from colbert_retriever.integrations.llama_index import ColBERTIndex
    from colbert_retriever.integrations.llama_index import ColBERTRetriever as LIRetriever

    texts = make_corpus(6, seed=12, min_words=8, max_words=12)

    def factor(folder):
        return json.loads((folder / layout.METADATA).read_text())["pooling"]["pool_factor"]

    ColBERTVectorStore.from_texts(texts, index_path=tmp_path / "lc", pool_factor=2)
    LCRetriever.from_documents([Document(page_content=t) for t in texts], tmp_path / "lcr", pool_factor=3)
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(texts)]
    ColBERTIndex(tmp_path / "li", nodes=nodes, pool_factor=2)
    LIRetriever.from_nodes(nodes, tmp_path / "lir", pool_factor=4)
    assert [factor(tmp_path / n) for n in ("lc", "lcr", "li", "lir")] == [2, 3, 2, 4]
