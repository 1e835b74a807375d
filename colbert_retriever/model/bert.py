"""A BERT encoder for inference in plain PyTorch, and a tokenizer on the ``tokenizers`` library alone.

Why: importing transformers' BERT code pulls in torch._dynamo and torch.distributed and takes ~5 s on 2 CPU
cores, four times the time to import torch; a process that opens an index to answer one query spent most of its
time there. ``LiteBert`` holds the same parameters under the same names as ``transformers.BertModel`` (so the
weights hash, i.e. the model identity stored in an index, is the same) and computes the same
``last_hidden_state`` (tested against transformers). It has no dropout and no training extras: the default model
loaded through ``load_model`` (inference, shared per process) uses it; ``ColBERT.default()`` and
``ColBERT.from_pretrained`` (training, fine-tuning) keep the transformers modules.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import cpugemm

SUPPORTED_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}
"""transformers' ``hidden_act`` names -> ``cpugemm.linear``'s activations."""


def supports(config: dict) -> bool:
    """Whether ``LiteBert`` reproduces a checkpoint with this config.json."""
    return (config.get("model_type") == "bert" and config.get("hidden_act", "gelu") in SUPPORTED_ACT
            and config.get("position_embedding_type", "absolute") == "absolute"
            and not config.get("is_decoder", False))


class _Config(SimpleNamespace):
    """The config fields this module reads; ``save_pretrained`` writes the original config.json back."""

    def save_pretrained(self, folder: Union[str, Path]) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps(self.raw, indent=2))


class _Embeddings(nn.Module):
    def __init__(self, c: _Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _Linear(nn.Module):
    """``dense`` (+ ``LayerNorm``), named as in transformers."""

    def __init__(self, d_in: int, d_out: int, eps: Optional[float] = None):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, c: _Config):
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class _Attention(nn.Module):
    def __init__(self, c: _Config):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Linear(c.hidden_size, c.hidden_size, c.layer_norm_eps)


class _Layer(nn.Module):
    def __init__(self, c: _Config):
        super().__init__()
        self.heads = c.num_attention_heads
        self.act = SUPPORTED_ACT[c.hidden_act]
        self.attention = _Attention(c)
        self.intermediate = _Linear(c.hidden_size, c.intermediate_size)
        self.output = _Linear(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        sa = self.attention.self

        def heads(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        # the linears go through cpugemm: inside halfgemm.packed_linears() (query encoding on CPU) they multiply by
        # packed float16 weights, inside cpugemm.onednn_documents() (documents, float32 on CPU) by oneDNN-packed
        # ones with bias and GELU fused, query/key/value as one product; elsewhere they are the plain layers
        q, k, v = cpugemm.fused((sa.query, sa.key, sa.value), x)
        ctx = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask,
                                             scale=1.0 / math.sqrt(d // self.heads))
        ctx = ctx.transpose(1, 2).reshape(b, n, d)
        out = self.attention.output
        x = out.LayerNorm(cpugemm.linear(out.dense, ctx, add=x))
        h = cpugemm.linear(self.intermediate.dense, x, self.act)
        return self.output.LayerNorm(cpugemm.linear(self.output.dense, h, add=x))


class _Encoder(nn.Module):
    def __init__(self, c: _Config):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(c) for _ in range(c.num_hidden_layers)])


class LiteBert(nn.Module):
    """``transformers.BertModel`` for inference: same parameter names, same ``last_hidden_state``."""

    base_model_prefix = "bert"

    def __init__(self, raw_config: dict):
        super().__init__()
        c = _Config(raw=raw_config, vocab_size=raw_config["vocab_size"], hidden_size=raw_config["hidden_size"],
                    num_hidden_layers=raw_config["num_hidden_layers"],
                    num_attention_heads=raw_config["num_attention_heads"],
                    intermediate_size=raw_config["intermediate_size"],
                    hidden_act=raw_config.get("hidden_act", "gelu"),
                    max_position_embeddings=raw_config.get("max_position_embeddings", 512),
                    type_vocab_size=raw_config.get("type_vocab_size", 2),
                    layer_norm_eps=raw_config.get("layer_norm_eps", 1e-12),
                    pad_token_id=raw_config.get("pad_token_id", 0))
        self.config = c
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Linear(c.hidden_size, c.hidden_size)  # unused by ColBERT; kept so the weights hash matches

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        x = self.embeddings(input_ids)
        # boolean mask: True = attend; every row keeps at least its [CLS]
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return SimpleNamespace(last_hidden_state=x)

    @classmethod
    def from_folder(cls, folder: Path, state: dict) -> "LiteBert":
        config = json.loads((folder / "config.json").read_text())
        model = cls(config)
        state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()
                 if not k.endswith("position_ids")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not fit LiteBert: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model


class FastTokenizer:
    """The part of a transformers tokenizer ``ColBERTTokenizer`` and ``ColBERT.save`` use, on ``tokenizers``
    (the Rust library transformers' fast tokenizers wrap, with the same tokenizer.json): no transformers import."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.tk = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tk.no_truncation()
        self.tk.no_padding()
        special = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            p = self.folder / name
            if p.exists():
                for k, v in json.loads(p.read_text()).items():
                    if k.endswith("_token") and k not in special:
                        special[k] = v["content"] if isinstance(v, dict) else v
        for k in ("pad_token", "mask_token", "cls_token", "sep_token", "unk_token", "bos_token", "eos_token"):
            tok = special.get(k)
            setattr(self, f"{k}_id", self.tk.token_to_id(tok) if isinstance(tok, str) else None)

    def __len__(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, token: str) -> Optional[int]:
        tid = self.tk.token_to_id(token)
        return self.unk_token_id if tid is None else tid

    def encode(self, text: str, add_special_tokens: bool = True, **_) -> list[int]:
        return self.tk.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, texts, add_special_tokens: bool = True, return_offsets_mapping: bool = False, **_) -> dict:
        single = isinstance(texts, str)
        encs = self.tk.encode_batch([texts] if single else list(texts), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [list(e.offsets) for e in encs]
        return {k: v[0] for k, v in out.items()} if single else out

    def save_pretrained(self, folder: Union[str, Path]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (self.folder / name).exists():
                shutil.copyfile(self.folder / name, folder / name)
