"""Token pooling is on by default (``pooling.DEFAULT_POOL_FACTOR`` = 2): a new index of texts or embeddings built
without ``pool_factor`` stores ``pooled_length(n, 2)`` rows per passage and records factor 2; adds and upserts pool
alike; searches answer as before. An existing index keeps the factor it records (1, or none recorded as indexes
written before pooling): no write without ``pool_factor`` switches it."""

import json
import math

import pytest

from colbert_retriever import CodecConfig, Index, InvalidArgument
from colbert_retriever.indexing.pooling import DEFAULT_POOL_FACTOR, pooled_length
from colbert_retriever.store import layout

from .conftest import make_corpus
from .test_pooling import doclens, unit_rows


def expected(model, texts, factor):
    _, lengths = model.encode_documents_packed(texts)
    return [pooled_length(n, factor) for n in lengths.tolist()]


def assert_hits(hits, k, n):
    """Exactly min(k, n) unique documents, best first."""
    assert len(hits) == min(k, n) and len({h.id for h in hits}) == len(hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_default_is_two():
    assert DEFAULT_POOL_FACTOR == 2


@pytest.mark.parametrize("n", [1, 10])
def test_default_build_pools_by_two(tmp_path, tiny_model, n):
    texts = make_corpus(n, seed=30 + n, min_words=6, max_words=14)
    ids = [f"d{i}" for i in range(n)]
    idx = Index.build(tmp_path / "i", texts, ids=ids, model=tiny_model, show_progress=False)
    assert idx.metadata["pooling"] == {"pool_factor": 2, "method": "ward"}
    want = expected(tiny_model, texts, 2)
    got = doclens(idx)
    assert got == want and idx.metadata["counts"]["embeddings"] == sum(want)
    _, lengths = tiny_model.encode_documents_packed(texts)
    assert sum(want) == sum(math.ceil(t / 2) for t in lengths.tolist()) < lengths.sum().item()  # about half
    for k in (1, 3, 20):
        trace = []
        hits = idx.search(texts[-1], k=k, trace=trace)
        assert_hits(hits, k, n)
        assert trace and trace[0].kernels  # a real search ran
    assert idx.search(texts[0], k=1)[0].id == "d0"

    new = make_corpus(3, seed=40 + n, min_words=6, max_words=12)
    idx.add(new, ids=["n0", "n1", "n2"])  # pooled as the index records
    assert doclens(idx)[-3:] == expected(tiny_model, new, 2)
    changed = ["river mountain ocean forest city paris london", "planet star galaxy comet"]
    idx.upsert(changed, ids=["d0", "n1"])
    assert doclens(idx)[-2:] == expected(tiny_model, changed, 2)
    assert_hits(idx.search(changed[0], k=50), 50, n + 3)
    reopened = Index.open(tmp_path / "i", model=tiny_model)
    assert reopened.metadata["pooling"]["pool_factor"] == 2 and len(reopened) == n + 3


def test_default_embeddings_build_pools_by_two(tmp_path):
    docs = [unit_rows(n, seed=n) for n in (1, 2, 7, 30)]
    idx = Index.build_from_embeddings(tmp_path / "e", docs, show_progress=False)
    assert idx.metadata["pooling"] == {"pool_factor": 2, "method": "ward"}
    assert doclens(idx) == [1, 1, 4, 15]
    idx.add_embeddings([unit_rows(9, seed=9)], ids=["x"])
    assert doclens(idx)[-1] == 5


def test_unpooled_index_is_not_switched(tmp_path, tiny_model):
    """An index built with pool_factor=1 stays unpooled through add, upsert, build-as-upsert and compact given no
    factor; asking for the default factor explicitly is refused, not applied."""
    texts = make_corpus(40, seed=50, min_words=6, max_words=14)
    path = tmp_path / "flat"
    idx = Index.build(path, texts, model=tiny_model, pool_factor=1, show_progress=False,
                      codec_config=CodecConfig(nbits=2, num_centroids=16))
    assert idx.metadata["pooling"] == {"pool_factor": 1} and doclens(idx) == expected(tiny_model, texts, 1)
    new = make_corpus(4, seed=51, min_words=8, max_words=12)
    idx.add(new, ids=[f"n{i}" for i in range(4)])
    assert doclens(idx)[-4:] == expected(tiny_model, new, 1)
    idx.upsert(["river mountain ocean forest city"], ids=["0"])
    assert doclens(idx)[-1] == expected(tiny_model, ["river mountain ocean forest city"], 1)[0]
    Index.build(path, ["a new text for the old index"], ids=["z"], model=tiny_model, show_progress=False)
    with pytest.raises(InvalidArgument, match="pool_factor=1"):
        idx.add(["other words"], ids=["y"], pool_factor=2)
    idx.compact(recluster=True, reencode=True)
    live = [r.text for r in idx.get(idx.ids())]
    assert doclens(idx) == expected(tiny_model, live, 1)
    assert Index.open(path, model=tiny_model).metadata["pooling"] == {"pool_factor": 1}


def test_index_written_before_pooling_stays_unpooled(tmp_path, tiny_model):
    """An index whose metadata has no "pooling" entry (written before pooling existed) is read as factor 1, and an
    add without a factor keeps it unpooled (and records factor 1)."""
    texts = make_corpus(30, seed=60, min_words=6, max_words=14)
    path = tmp_path / "old"
    Index.build(path, texts, model=tiny_model, pool_factor=1, show_progress=False,
                codec_config=CodecConfig(nbits=2, num_centroids=16)).close()
    meta_path = path / layout.METADATA
    d = json.loads(meta_path.read_text())
    del d["pooling"]
    meta_path.write_text(json.dumps(d))
    idx = Index.open(path, model=tiny_model)
    new = make_corpus(3, seed=61, min_words=8, max_words=12)
    idx.add(new, ids=["n0", "n1", "n2"])
    assert doclens(idx) == expected(tiny_model, texts + new, 1)
    assert json.loads(meta_path.read_text())["pooling"] == {"pool_factor": 1}


def test_overwrite_takes_the_new_default(tmp_path, tiny_model):
    texts = make_corpus(12, seed=70, min_words=6, max_words=12)
    path = tmp_path / "i"
    Index.build(path, texts, model=tiny_model, pool_factor=1, show_progress=False).close()
    idx = Index.build(path, texts, model=tiny_model, if_exists="overwrite", show_progress=False)
    assert idx.metadata["pooling"]["pool_factor"] == 2 and doclens(idx) == expected(tiny_model, texts, 2)


def test_cli_default_follows_the_library(tmp_path, capsys):
    import argparse

    from colbert_retriever.cli.main import build_parser, main

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in sub.choices["index"]._actions if "--pool-factor" in a.option_strings)
    assert flag.default is None  # None: the library decides (a new index pools, an existing one keeps its own)
    assert f"default: {DEFAULT_POOL_FACTOR} for a new index" in flag.help
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(make_corpus(8, seed=71, min_words=8, max_words=12))))
    assert main(["index", str(data), str(tmp_path / "i"), "--quiet"]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "i" / layout.METADATA).read_text())
    assert meta["pooling"] == {"pool_factor": DEFAULT_POOL_FACTOR, "method": "ward"}
    assert main(["index", str(data), str(tmp_path / "j"), "--quiet", "--pool-factor", "1"]) == 0
    assert json.loads((tmp_path / "j" / layout.METADATA).read_text())["pooling"] == {"pool_factor": 1}


def test_default_pooled_index_on_the_real_path(tmp_path):
    """A default (pooled) index at the scale where PLAID's stages run: 3,000 documents of 40 token embeddings
    around 300 topics (clustered like real ColBERT tokens: cosine ~0.83 to their topic), built without
    ``pool_factor``; queries are noisy copies of half a document's tokens. Default search runs the stages on a
    subset, finds the planted document as often as exhaustive search and agrees with exhaustive top-10."""
    import torch

    from colbert_retriever import SearchConfig

    from .conftest import assert_real_path

    g = torch.Generator().manual_seed(0)
    dim, n_docs, doclen, topics = 64, 3000, 40, 300
    centers = torch.nn.functional.normalize(torch.randn(topics, dim, generator=g), dim=-1)
    pick = torch.randint(0, topics, (n_docs, 3), generator=g).gather(1, torch.randint(0, 3, (n_docs, doclen),
                                                                                        generator=g))
    embs = torch.nn.functional.normalize(centers[pick] + 0.06 * torch.randn(n_docs, doclen, dim, generator=g), dim=-1)
    idx = Index.build_from_embeddings(tmp_path / "i", list(embs), name="clustered", show_progress=False)
    assert idx.metadata["pooling"]["pool_factor"] == 2 and idx.metadata["counts"]["embeddings"] == n_docs * 20
    planted = torch.randperm(n_docs, generator=g)[:40].tolist()
    Q = [torch.nn.functional.normalize(embs[d, torch.randperm(doclen, generator=g)[:20]]
                                       + 0.03 * torch.randn(20, dim, generator=g), dim=-1) for d in planted]
    trace = []
    got = idx.search_embeddings(Q, 10, trace=trace)
    ref = idx.search_embeddings(Q, 10, config=SearchConfig(exhaustive=True))
    assert_real_path(trace, n_docs)
    for hits in got:
        assert_hits(hits, 10, n_docs)
    found = sum(h[0].id == str(d) for h, d in zip(got, planted))
    found_exh = sum(h[0].id == str(d) for h, d in zip(ref, planted))
    agree = sum(len({h.id for h in a} & {h.id for h in b}) for a, b in zip(got, ref)) / (10 * len(planted))
    print(f"planted first: {found} (exhaustive {found_exh}) of {len(planted)}; agreement@10 {agree:.3f}")
    assert found >= found_exh - 1 and found_exh >= 36
    assert agree >= 0.9
