"""The float32 document path on CPU (``model/cpugemm.py``): oneDNN-packed linears with bias, GELU and the residual
fused give the plain layers' results up to summation order, the encoder really takes that path for float32
documents (and not for queries, bf16 documents or training), an enclosing ``onednn_documents(False)`` restores the
plain layers, packed weights follow weight changes, and the same holds with oneDNN/ATen capped to AVX2."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from colbert_retriever import load_model
from colbert_retriever.model import cpugemm

from .conftest import make_corpus

pytestmark = pytest.mark.skipif(not cpugemm.onednn_available(), reason="this torch build has no oneDNN fused linear")


def test_linear_matches_plain_layers():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 96)
    x, r = torch.randn(5, 7, 48), torch.randn(5, 7, 96)
    qkv = (torch.nn.Linear(48, 48), torch.nn.Linear(48, 48), torch.nn.Linear(48, 48, bias=False))
    with torch.inference_mode(), cpugemm.onednn_documents():
        got = {"none": cpugemm.linear(lin, x), "gelu": cpugemm.linear(lin, x, "gelu"),
               "tanh": cpugemm.linear(lin, x, "gelu_tanh"), "relu": cpugemm.linear(lin, x, "relu"),
               "add": cpugemm.linear(lin, x, add=r), "fused": torch.cat(cpugemm.fused(qkv, x), -1)}
        before = cpugemm.cached_layers()
        with torch.no_grad():
            lin.weight.mul_(2)  # a weight change re-packs
        doubled = cpugemm.linear(lin, x)
    y = F.linear(x, lin.weight / 2, lin.bias)
    want = {"none": y, "gelu": F.gelu(y), "tanh": F.gelu(y, approximate="tanh"), "relu": F.relu(y), "add": y + r,
            "fused": torch.cat([m(x) for m in qkv], -1).detach()}
    for k, v in want.items():
        assert got[k].shape == v.shape and torch.allclose(got[k], v, atol=1e-5), k
    assert torch.allclose(doubled, F.linear(x, lin.weight, lin.bias).detach(), atol=1e-5)
    assert before >= 2
    with pytest.raises(ValueError):
        cpugemm.linear(lin, x, "gelu", add=r)


def test_encoder_takes_the_onednn_path_for_float32_documents():
    model = load_model("default", dtype="float32")
    docs = make_corpus(24, seed=3, min_words=10, max_words=40)
    with cpugemm.onednn_documents(False):  # the plain layers: the reference
        ref, ref_len = model.encode_documents_packed(docs, batch_size=8)
    fused, lengths = model.encode_documents_packed(docs, batch_size=8)
    assert cpugemm.cached_layers() >= 6 * 4 + 1  # every LiteBert linear (q/k/v as one) and the projection
    assert torch.equal(lengths, ref_len)
    cos = F.cosine_similarity(fused, ref, dim=-1)
    assert cos.min() > 0.99999 and not torch.equal(fused, ref)  # another summation order, the same embeddings
    q_plain = model.with_precision(fp16_query_weights=False)  # float32 queries: would differ if they took it
    with cpugemm.onednn_documents(False):
        q_ref = q_plain.encode_queries(["a short query about rivers"])
    assert torch.equal(q_plain.encode_queries(["a short query about rivers"]), q_ref)


def test_bf16_documents_and_training_keep_their_paths():
    model = load_model("default", dtype="bfloat16")
    assert isinstance(model._document_precision(), torch.autocast)
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with cpugemm.onednn_documents():
        y = cpugemm.linear(lin, x)  # gradients wanted: the plain layer, differentiable
    assert y.requires_grad


def test_avx2_capped_matches_plain_layers():
    """ATen, oneDNN and MKL capped to AVX2 (what an AVX2-only CPU runs): the fused path still equals the plain one."""
    code = ("import json, torch\nfrom colbert_retriever import load_model\n"
            "from colbert_retriever.model import cpugemm\n"
            "m = load_model('default', dtype='float32')\ndocs = ['alpha beta gamma river ' * 20, 'ocean forest city']\n"
            "with cpugemm.onednn_documents(False):\n    ref, _ = m.encode_documents_packed(docs)\n"
            "got, _ = m.encode_documents_packed(docs)\n"
            "print(json.dumps({'cap': torch.backends.cpu.get_cpu_capability(), 'packed': cpugemm.cached_layers(),"
            " 'cos': torch.nn.functional.cosine_similarity(got, ref, dim=-1).min().item()}))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "COLBERT_RETRIEVER_CPU_BF16": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["cap"] == "AVX2" and r["packed"] > 0 and r["cos"] > 0.99999
