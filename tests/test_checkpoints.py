import json
import shutil

import pytest
import torch

from colbert_retriever import CheckpointError, ColBERT
from colbert_retriever.model.checkpoints import detect_layout


TEXTS = ["the quick brown fox", "late interaction retrieval, with maxsim!"]


@pytest.mark.parametrize("layout", ["colbert_ai", "pylate"])
def test_load_save_roundtrip(layout, colbert_ai_ckpt, pylate_ckpt, tmp_path):
    src = colbert_ai_ckpt if layout == "colbert_ai" else pylate_ckpt
    assert detect_layout(src) == ("colbert-ai" if layout == "colbert_ai" else "pylate")
    m = ColBERT.from_pretrained(src, dtype="float32")
    m.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").exists()
    assert detect_layout(tmp_path / "saved") == "colbert-ai"
    m2 = ColBERT.from_pretrained(tmp_path / "saved", dtype="float32")
    assert m2.identity == m.identity
    assert m2.config == m.config
    assert torch.equal(m.tokenizer.queries(TEXTS).input_ids, m2.tokenizer.queries(TEXTS).input_ids)
    assert torch.allclose(m.encode_queries(TEXTS), m2.encode_queries(TEXTS), atol=1e-6)
    for a, b in zip(m.encode_documents(TEXTS), m2.encode_documents(TEXTS)):
        assert torch.allclose(a, b, atol=1e-6)


def test_colbert_ai_matches_manual_forward(colbert_ai_ckpt):
    """Embeddings equal backbone -> linear -> normalise computed by hand from the raw weights."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    m = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32")
    state = load_file(str(colbert_ai_ckpt / "model.safetensors"))
    bert = BertModel(BertConfig.from_pretrained(str(colbert_ai_ckpt)))
    bert.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("bert.")}, strict=False)
    bert.eval()
    b = m.tokenizer.queries(["hello world"])
    with torch.no_grad():
        h = bert(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
        ref = torch.nn.functional.normalize(h @ state["linear.weight"].T, dim=-1)
    assert (m.encode_queries(["hello world"]) - ref).abs().max() < 1e-3  # CPU default: float16 query weights
    m = m.with_precision(fp16_query_weights=False)
    assert (m.encode_queries(["hello world"]) - ref).abs().max() < 1e-4


def test_pytorch_model_bin_weights_only(colbert_ai_ckpt, tmp_path):
    from safetensors.torch import load_file

    dst = tmp_path / "bin"
    shutil.copytree(colbert_ai_ckpt, dst)
    torch.save(load_file(str(dst / "model.safetensors")), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    a = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32")
    b = ColBERT.from_pretrained(dst, dtype="float32")
    assert a.identity == b.identity


def test_unknown_layout_error(tmp_path):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout.*notes.txt"):
        ColBERT.from_pretrained(tmp_path / "weird")


def test_missing_folder_and_weights(tmp_path, colbert_ai_ckpt):
    with pytest.raises(FileNotFoundError):
        ColBERT.from_pretrained(tmp_path / "nope")
    dst = tmp_path / "noweights"
    shutil.copytree(colbert_ai_ckpt, dst)
    (dst / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        ColBERT.from_pretrained(dst)


def test_dim_mismatch_error(tmp_path, colbert_ai_ckpt):
    dst = tmp_path / "dim"
    shutil.copytree(colbert_ai_ckpt, dst)
    meta = json.loads((dst / "artifact.metadata").read_text())
    meta["dim"] = 64
    (dst / "artifact.metadata").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="dim=64"):
        ColBERT.from_pretrained(dst)
