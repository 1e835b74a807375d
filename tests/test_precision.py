"""One precision policy (``device.Precision``), and both CPU branches tested on any machine: the CPU probe is
switched with ``COLBERT_RETRIEVER_CPU_BF16``, so an AVX2-only machine exercises the bf16 branch and a bf16 machine
the plain one. Exactness tests elsewhere pin float32; here the bf16 branch is checked by cosine and overlap."""

import json
import os
import subprocess
import sys

import pytest
import torch

from colbert_retriever import ColBERT, Index, InvalidArgument, load_model
from colbert_retriever.device import (
    BF16_DOCUMENTS_ON_BF16_CPUS,
    CPU_BF16_ENV,
    Precision,
    cpu_supports_bf16,
    resolve_device,
    resolve_precision,
)

from . import isa
from .conftest import assert_ranked_alike, make_corpus


@pytest.mark.parametrize("flag", ["0", "1"])
def test_policy_per_cpu_kind(monkeypatch, flag):
    monkeypatch.setenv(CPU_BF16_ENV, flag)
    assert cpu_supports_bf16() is (flag == "1")
    cpu = torch.device("cpu")
    auto = resolve_precision(cpu, "auto")
    bf16_docs = flag == "1" and BF16_DOCUMENTS_ON_BF16_CPUS
    assert auto.documents == (torch.bfloat16 if bf16_docs else torch.float32)
    assert auto.assignment == torch.float32  # on every CPU
    assert resolve_precision(cpu, None) == auto
    assert resolve_precision(cpu, "float32").documents == torch.float32
    explicit = resolve_precision(cpu, "bfloat16")
    assert explicit.documents == torch.bfloat16
    assert Precision.from_dict(json.loads(json.dumps(auto.to_dict()))) == auto
    # indexes built by 0.2 recorded a "queries" dtype that was never a knob: still read, ignored
    assert Precision.from_dict({**auto.to_dict(), "queries": "float32"}) == auto


def test_bad_dtype_and_device_are_named():
    with pytest.raises(InvalidArgument, match="dtype='int8'"):
        resolve_precision(torch.device("cpu"), "int8")
    with pytest.raises(InvalidArgument, match="unknown precision keys"):
        Precision.from_dict({"documents": "float32", "bogus": 1})
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("flag", ["0", "1"])
def test_queries_are_float32_on_every_cpu(monkeypatch, colbert_ai_ckpt, flag):
    """The query encoder computes in float32 whatever the CPU and the documents' dtype: the same embeddings from
    a model asked for bf16 documents and one asked for float32."""
    monkeypatch.setenv(CPU_BF16_ENV, flag)
    texts = ["how do I parse json", "heat shock protein folding"]
    a = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="bfloat16").with_precision(fp16_query_weights=False)
    b = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32").with_precision(fp16_query_weights=False)
    assert a.precision.documents == torch.bfloat16 and b.precision.documents == torch.float32
    assert next(a.parameters()).dtype == torch.float32  # CPU weights stay float32 (bf16 documents: autocast)
    assert torch.equal(a.encode_queries(texts), b.encode_queries(texts))


def test_bf16_documents_close_to_float32(colbert_ai_ckpt, tmp_path):
    """The bf16 branch (runs on any CPU, natively or emulated): document embeddings within cosine 0.99 of float32,
    and an index built from bf16 documents ranks like the float32 one (top-10 overlap by exhaustive search)."""
    bf16 = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="bfloat16")
    fp32 = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32")
    texts = make_corpus(300, seed=13, min_words=10, max_words=20)
    for x, y in zip(bf16.encode_documents(texts[:20]), fp32.encode_documents(texts[:20])):
        assert x.dtype == torch.float32 and x.shape == y.shape
        assert float((x * y).sum(-1).min()) > 0.99
    a = Index.build(tmp_path / "bf16", texts, model=bf16, show_progress=False)
    b = Index.build(tmp_path / "fp32", texts, model=fp32, show_progress=False)
    assert a.metadata["provenance"]["precision"]["documents"] == "bfloat16"
    assert b.metadata["provenance"]["precision"]["documents"] == "float32"
    overlap = 0
    queries = make_corpus(60, seed=14, min_words=3, max_words=8)
    for q in queries:
        overlap += len({h.id for h in a.search(q, k=10, exhaustive=True)}
                       & {h.id for h in b.search(q, k=10, exhaustive=True)})
    assert overlap / (10 * len(queries)) >= 0.7  # measured 0.83 natively and capped to AVX2


def test_an_index_answers_alike_on_either_kind_of_cpu(monkeypatch, colbert_ai_ckpt, tmp_path):
    """An index built with the auto policy where the CPU probe reports bf16 (bf16 documents, recorded) opens where
    it does not and answers the same: queries are float32 under either answer, the same computation, so the same
    hits and scores. In a process capped to AVX2 (other torch, oneDNN and numba code: tests/isa.py) it answers
    the same up to last bits. The same text, dtype and CPU give the same index; another dtype or instruction set
    changes the encodings' last bits, and the k-means trained on them can then move a centroid."""
    texts = make_corpus(400, seed=15)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    auto = Index.build(tmp_path / "auto", texts, model=ColBERT.from_pretrained(colbert_ai_ckpt), show_progress=False)
    recorded = auto.metadata["provenance"]["precision"]["documents"]
    assert recorded == ("bfloat16" if BF16_DOCUMENTS_ON_BF16_CPUS else "float32")
    again = Index.build(tmp_path / "again", texts, model=ColBERT.from_pretrained(colbert_ai_ckpt), show_progress=False)
    for part in ("codes", "residuals"):  # the same text, dtype and CPU: the same index (a build is reproducible)
        a, b = ((i.path / f"{i.metadata['segments'][0]['name']}.{part}.npy").read_bytes() for i in (auto, again))
        assert a == b, part
    queries = make_corpus(5, seed=16)
    here = [[(h.id, h.score) for h in auto.search(q, k=5)] for q in queries]
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    other = Index.open(tmp_path / "auto", model=ColBERT.from_pretrained(colbert_ai_ckpt))
    assert other.model.precision.documents == torch.float32  # the probe was read: this is the plain kind's model
    assert [[(h.id, h.score) for h in other.search(q, k=5)] for q in queries] == here
    script = ("import json, sys; from colbert_retriever import ColBERT, Index; "
              "idx = Index.open(sys.argv[1], model=ColBERT.from_pretrained(sys.argv[2])); "
              "print(json.dumps([[(h.id, h.score) for h in idx.search(q, k=5)] for q in sys.argv[3:]]))")
    env = {k: v for k, v in os.environ.items() if k not in isa.CAP_VARIABLES}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "auto"), str(colbert_ai_ckpt), *queries],
                         env={**env, **isa.CAPS["avx2"]}, capture_output=True, text=True, timeout=600, check=True)
    for got, want in zip(json.loads(out.stdout.strip().splitlines()[-1]), here):
        assert_ranked_alike([tuple(x) for x in got], want, 1e-4)


def test_shared_model_is_never_changed_in_place(colbert_ai_ckpt):
    shared = load_model(str(colbert_ai_ckpt))
    assert load_model(str(colbert_ai_ckpt)) is shared
    view = shared.with_precision(fp16_query_weights=False)
    with pytest.raises(InvalidArgument, match="queries"):
        shared.with_precision(queries=torch.float16)  # not a knob: named, never silently ignored
    with pytest.raises(InvalidArgument, match="unknown precision fields"):
        shared.with_precision(bogus=True)
    assert view is not shared and view.backbone is shared.backbone and shared.fp16_query_weights
    cfg = shared.config.replace(doc_maxlen=12)
    assert shared.with_config(cfg).config.doc_maxlen == 12 and shared.config.doc_maxlen != 12
    with pytest.raises(InvalidArgument, match="with_config"):
        shared.set_config(cfg)
    private = ColBERT.from_pretrained(colbert_ai_ckpt)
    private.set_config(cfg)  # a private copy may change
    assert private.config.doc_maxlen == 12


@pytest.mark.parametrize("move", [lambda m: m.to(torch.float64), lambda m: m.to("cpu"), lambda m: m.half(),
                                  lambda m: m.cpu(), lambda m: m.double(), lambda m: m.to(dtype=torch.bfloat16)])
def test_views_cannot_move_the_model_they_share(colbert_ai_ckpt, move):
    shared = load_model(str(colbert_ai_ckpt))
    views = [shared.with_precision(fp16_query_weights=False), shared.with_config(shared.config.replace(doc_maxlen=9)),
             shared.with_config(shared.config.replace(doc_maxlen=9)).with_precision(fp16_query_weights=False)]
    before = {n: (p.dtype, p.device) for n, p in shared.named_parameters()}
    for view in views:
        with pytest.raises(InvalidArgument, match="move the model, then take the view"):
            move(view)
    assert {n: (p.dtype, p.device) for n, p in shared.named_parameters()} == before
    assert all(p.dtype == torch.float32 for p in shared.parameters())  # nothing was cast, not even partly
    private = ColBERT.from_pretrained(colbert_ai_ckpt)
    assert next(move(private).parameters()) is not None  # a model of its own moves as any nn.Module


def test_device_auto_everywhere(tmp_path, tiny_model, colbert_ai_ckpt):
    from colbert_retriever.cli.main import main

    texts = make_corpus(30, seed=3)
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, device="auto", show_progress=False)
    assert idx.device == resolve_device("auto")
    again = Index.open(tmp_path / "i", model=tiny_model, device="auto")
    assert again.search(texts[0], k=3)[0].id == idx.search(texts[0], k=3)[0].id
    if not torch.cuda.is_available():  # asking for a GPU that is not there fails before anything is written
        with pytest.raises(InvalidArgument, match="CUDA is not available"):
            Index.build(tmp_path / "gpu", texts, model=tiny_model, device="cuda", show_progress=False)
        assert not (tmp_path / "gpu").exists()
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    assert main(["index", str(data), str(tmp_path / "cli"), "--model", str(colbert_ai_ckpt), "--device", "auto",
                 "--quiet"]) == 0
    assert main(["search", str(tmp_path / "cli"), texts[0], "--device", "auto", "--json"]) == 0
