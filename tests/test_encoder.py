import logging

import pytest
import torch

from colbert_retriever import ColBERT, InvalidArgument, InvalidType
from colbert_retriever.model.encoder import DEFAULT_MODEL_NAME


def test_query_token_ids_colbert_ai_layout(tiny_model):
    b = tiny_model.tokenizer.queries(["hello world"])
    # [CLS] [unused0] hello world [SEP] then [MASK] padding to query_maxlen=16
    assert b.input_ids[0].tolist() == [101, 1, 7592, 2088, 102] + [103] * 11
    assert b.attention_mask[0].tolist() == [1] * 5 + [0] * 11  # attend_to_mask_tokens=False
    assert b.keep.all()


def test_document_token_ids_and_skiplist(tiny_model):
    b, truncated, _ = tiny_model.tokenizer.documents(["hello, world!", "hi"])
    assert truncated == 0
    assert b.input_ids[0].tolist() == [101, 2, 7592, 1010, 2088, 999, 102]
    assert b.keep[0].tolist() == [True, True, True, False, True, False, True]  # ',' and '!' dropped
    assert b.input_ids[1].tolist() == [101, 2, 7632, 102, 0, 0, 0]
    assert b.keep[1].tolist() == [True] * 4 + [False] * 3


def test_pylate_prefix_tokens(pylate_ckpt):
    m = ColBERT.from_pretrained(pylate_ckpt, dtype="float32")
    q = m.tokenizer.queries(["hello"])
    qid = m.hf_tokenizer.convert_tokens_to_ids("[Q] ")
    assert qid >= 30522
    assert q.input_ids[0, :4].tolist() == [101, qid, 7592, 102]
    assert q.input_ids[0, 4:].tolist() == [103] * 12
    d, _, _ = m.tokenizer.documents(["hello"])
    assert d.input_ids[0].tolist() == [101, m.hf_tokenizer.convert_tokens_to_ids("[D] "), 7592, 102]


def test_shapes_and_normalisation(tiny_model):
    Q = tiny_model.encode_queries(["a query", "another query here"])
    assert Q.shape == (2, 16, 32) and Q.dtype == torch.float32
    assert torch.allclose(Q.norm(dim=-1), torch.ones(2, 16), atol=1e-5)
    D = tiny_model.encode_documents(["one two three", "four, five."])
    assert [d.shape for d in D] == [(6, 32), (5, 32)]  # CLS, marker, words, SEP; punctuation dropped
    assert torch.allclose(D[0].norm(dim=-1), torch.ones(6), atol=1e-5)


def test_batching_and_sorting_do_not_change_embeddings(tiny_model):
    docs = ["short", "a much longer document with many more words in it", "medium length text"]
    one_by_one = [tiny_model.encode_documents([d])[0] for d in docs]
    batched = tiny_model.encode_documents(docs, batch_size=2)
    for a, b in zip(one_by_one, batched):
        assert torch.allclose(a, b, atol=1e-5)


def test_truncation_single_summary_warning(tiny_model, caplog):
    long = " ".join(["word"] * 100)
    with caplog.at_level(logging.WARNING):
        D = tiny_model.encode_documents([long, long, "short"])
    assert D[0].shape[0] == 24  # doc_maxlen
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 3 documents")
    assert "158 tokens dropped" in msgs[0]  # 2 x (100 - 21 kept: doc_maxlen 24 less [CLS], [D], [SEP])


@pytest.mark.parametrize("bad,exc", [([], InvalidArgument), ([""], InvalidArgument), (["  "], InvalidArgument),
                                     ([1, "a"], InvalidType), (None, InvalidType)])
def test_bad_texts(tiny_model, bad, exc):
    with pytest.raises(exc):
        tiny_model.encode_documents(bad)
    with pytest.raises(exc):
        tiny_model.encode_queries(bad)


def test_rerank(tiny_model):
    texts = ["python compiler kernel", "music guitar piano", "python kernel"]
    hits = tiny_model.rerank("python kernel", texts, ids=["a", "b", "c"], k=2)
    assert [h.rank for h in hits] == [1, 2]
    assert hits[0].score >= hits[1].score
    all_hits = tiny_model.rerank("python kernel", texts)
    assert sorted(h.id for h in all_hits) == ["0", "1", "2"]
    # scores equal exact MaxSim
    Q = tiny_model.encode_queries(["python kernel"])[0]
    D = tiny_model.encode_documents(texts)
    exact = [float((Q @ d.T).max(1).values.sum()) for d in D]
    for h in all_hits:
        assert h.score == pytest.approx(exact[int(h.id)], abs=1e-4)
        assert h.text == texts[int(h.id)]
    with pytest.raises(InvalidArgument):
        tiny_model.rerank("q", texts, k=0)


def test_default_model_offline(default_model):
    assert default_model.name == DEFAULT_MODEL_NAME
    assert default_model.config.dim == 128 and not default_model.config.mask_augmentation
    Q = default_model.encode_queries(["how do I parse JSON"])
    assert Q.shape == (1, 32, 128)
    real = Q[0].norm(dim=-1) > 0
    assert 3 <= int(real.sum()) < 32  # only the real tokens are kept without query augmentation
    hits = default_model.rerank("how do I parse JSON", ["Deserialize a JSON document to a Python object.",
                                                        "Return the sum of the numbers in a list."])
    assert hits[0].id == "0"


def test_light_default_backbone_matches_transformers(default_model, tmp_path, caplog):
    """load_model("default") runs BERT without importing transformers (bert.LiteBert + tokenizers): same weights
    hash (so the same model identity in an index), same embeddings, same tokens; it saves and reloads."""
    from colbert_retriever import ColBERT
    from colbert_retriever.model.bert import FastTokenizer, LiteBert

    assert isinstance(default_model.backbone, LiteBert) and isinstance(default_model.hf_tokenizer, FastTokenizer)
    ref = ColBERT.default(dtype="float32")
    assert ref.identity == default_model.identity and type(ref.backbone).__name__ == "BertModel"
    texts = ["Paris is the capital of France.", "Ünïcödé, punctuation; numbers 3.14 — and [brackets]!",
             " ".join(["word"] * 400)]
    exact = default_model.with_precision(documents=torch.float32)  # exactness: float32 documents on any CPU
    for a, b in zip(exact.encode_documents(texts), ref.encode_documents(texts)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    for a, b in zip(default_model.encode_documents(texts), ref.encode_documents(texts)):  # the machine's policy
        assert a.shape == b.shape and float((a * b).sum(-1).min()) > 0.999
    assert torch.allclose(default_model.encode_queries(texts), ref.encode_queries(texts), atol=1e-3)
    assert default_model.tokenizer.count_tokens(texts) == ref.tokenizer.count_tokens(texts)
    assert default_model.passage_spans(texts[2]) == ref.passage_spans(texts[2])
    with caplog.at_level(logging.WARNING, logger="colbert_retriever.model.checkpoints"):
        default_model.save(tmp_path / "ckpt")  # colbert-ai layout, loadable by transformers
    # the default model has no markers; colbert-ai would insert its own: said loudly
    assert "without a query or document marker" in caplog.text and "colbert-ai always inserts" in caplog.text
    again = ColBERT.from_pretrained(tmp_path / "ckpt")
    assert again.identity == default_model.identity and again.config == default_model.config
    script = ("import sys; from colbert_retriever import Index, load_model; load_model('default'); "
              "print(any(m.startswith('transformers') for m in sys.modules))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_queries_without_augmentation_run_on_their_own_length(default_model):
    """Without [MASK] augmentation the backbone runs on the batch's longest query, not query_maxlen: the
    embeddings equal those of the fully padded batch, and the output keeps its (n, query_maxlen, dim) shape."""
    m = default_model
    assert not m.config.mask_augmentation
    queries = ["short one", "a somewhat longer query about protein folding and heat shock responses", "x"]
    got = m.encode_queries(queries)
    b = m.tokenizer.queries(queries)
    with torch.inference_mode(), m._query_weights():  # the weights encode_queries uses (see the next test)
        ref = m._embed(b.input_ids, b.attention_mask) * b.keep[..., None]
    assert got.shape == (3, m.config.query_maxlen, m.config.dim)
    assert torch.allclose(got, ref, atol=1e-5)
    assert int((got[0].abs().sum(-1) > 0).sum()) == int(b.keep[0].sum()) < 8  # zero rows past the real tokens


def test_query_rows_are_the_real_rows_of_the_padded_queries(tiny_model, default_model):
    """``encode_query_rows`` (what a search takes) holds each query's kept rows, once: the padded
    ``encode_queries`` is those rows followed by zero rows, with query augmentation (tiny model: every row kept)
    and without (default model: the query's tokens only)."""
    queries = ["short one", "a somewhat longer query about protein folding and heat shock responses", "x"]
    for m in (tiny_model, default_model):
        rows, padded = m.encode_query_rows(queries), m.encode_queries(queries)
        keep = m.tokenizer.queries(queries).keep
        assert [r.shape for r in rows] == [(int(k.sum()), m.config.dim) for k in keep]
        for r, p in zip(rows, padded):
            assert r.dtype == torch.float32 and r.is_contiguous()
            assert torch.equal(p[: r.shape[0]], r) and not p[r.shape[0]:].any()
    assert tiny_model.config.mask_augmentation and all(r.shape[0] == 16 for r in tiny_model.encode_query_rows(queries))
    assert default_model.encode_query_rows("x")[0].shape[0] < 8  # a str is one query


def test_fp16_query_weights(default_model):
    """On CPU, queries run on the linear layers' weights rounded to float16 (fbgemm's packed GEMM): the packed
    path really runs (each linear's packed weights are cached beside it: one entry per layer, one per fused
    query/key/value), the embeddings stay within cosine 0.99999 of float32, and ``fp16_query_weights=False``
    gives the float32 embeddings. Documents and gradients never take it; other threads never see it; the shared
    model is not changed (a view carries the other setting)."""
    import threading

    from colbert_retriever.model import bert, halfgemm

    if not halfgemm.available():
        pytest.skip("this torch build has no fbgemm fp16 GEMM")
    m = default_model
    queries = ["how do I parse JSON in python", "heat shock proteins", "x"]
    b = m.tokenizer.queries(queries)
    with torch.inference_mode():
        fp32 = m._embed(b.input_ids, b.attention_mask) * b.keep[..., None]
    assert m.fp16_query_weights and m.precision.fp16_query_weights
    half = m.encode_queries(queries)
    layers = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    n_fused = sum(isinstance(x, bert._Layer) for x in m.modules())  # one product for query, key and value
    singles = [x for x in layers if x in halfgemm._cache]
    fused = [x for x in layers if x in halfgemm._fused_cache]
    assert len(fused) == n_fused and len(singles) == len(layers) - 1 - 3 * n_fused  # the pooler is not used
    real = fp32.norm(dim=-1) > 0
    assert (half * fp32).sum(-1)[real].min() > 0.99999
    assert 0 < (half - fp32).abs().max() < 1e-3  # rounded weights: close, not identical
    exact = m.with_precision(fp16_query_weights=False)
    assert exact.backbone is m.backbone and m.fp16_query_weights  # a view: same weights, the shared one unchanged
    assert torch.allclose(exact.encode_queries(queries), fp32, atol=1e-5)  # float32 (other GEMM shapes)
    with pytest.raises(InvalidArgument, match="with_precision"):
        m.fp16_query_weights = False
    with pytest.raises(InvalidArgument, match="with_config"):
        m.set_config(m.config)
    doc = m.with_precision(documents=torch.float32).encode_documents(["a document about JSON parsing"])[0]
    with torch.inference_mode():
        bd, _, _ = m.tokenizer.documents(["a document about JSON parsing"])
        ref = m._embed(bd.input_ids, bd.attention_mask)[0][bd.keep[0]]
    # documents: float32 weights (on oneDNN's packed float32 product where torch has it, tests/test_encode_speed.py:
    # last bits only, where float16 weights move embeddings by ~1e-4)
    assert (doc - ref).abs().max() < 1e-5
    layer = m.linear
    x = torch.randn(3, layer.in_features)
    with halfgemm.packed_linears():
        other = []
        t = threading.Thread(target=lambda: other.append(halfgemm.linear(layer, x)))
        t.start()
        t.join()
        assert torch.equal(other[0], torch.nn.functional.linear(x, layer.weight))  # another thread: float32
        y = halfgemm.linear(layer, x.clone().requires_grad_())  # gradients flowing: float32
        assert y.requires_grad and torch.equal(y.detach(), torch.nn.functional.linear(x, layer.weight))
        with torch.no_grad():
            packed = halfgemm.linear(layer, x)
        assert not torch.equal(packed, torch.nn.functional.linear(x, layer.weight))


def test_model_classes_are_never_rewritten(tiny_model, default_model):
    """Building a ColBERT leaves the backbone's modules as they were (tools matching on exact types still see
    nn.Linear)."""
    for m in (tiny_model, default_model):
        assert all(type(x) is torch.nn.Linear for x in m.modules() if isinstance(x, torch.nn.Linear))


def test_fused_query_key_value_products_equal_the_separate_ones():
    """Under ``packed_linears`` an attention's query, key and value come from one packed product of the stacked
    weights: the same numbers as three products (checked bitwise), rebuilt when a weight changes."""
    from colbert_retriever.model import halfgemm

    if not halfgemm.available():
        pytest.skip("this torch build has no fbgemm fp16 GEMM")
    torch.manual_seed(0)
    layers = tuple(torch.nn.Linear(48, 48) for _ in range(3))
    x = torch.randn(1, 7, 48)
    with torch.inference_mode(), halfgemm.packed_linears():
        assert all(halfgemm.applies(layer, x) for layer in layers)
        for a, b in zip(halfgemm.fused(layers, x), [halfgemm.linear(layer, x) for layer in layers]):
            assert torch.equal(a, b)
        with torch.no_grad():
            layers[1].weight.mul_(2)
        for a, b in zip(halfgemm.fused(layers, x), [halfgemm.linear(layer, x) for layer in layers]):
            assert torch.equal(a, b)
    assert not halfgemm.applies(layers[0], x)  # outside the block: float32 weights
