import json
import random

import pytest
import torch

from colbert_retriever import ColBERT, InvalidArgument
from colbert_retriever.training import Example, TrainConfig, load_examples, train

from .conftest import WORDS


def toy_examples(n=64, seed=0, scores=False):
    """Query = one word; the positive passage contains it, the negatives don't: learnable lexical matching."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.choice(WORDS)
        others = [x for x in WORDS if x != w]
        pos = " ".join(rng.sample(others, 3) + [w])
        negs = [" ".join(rng.sample(others, 4)) for _ in range(2)]
        out.append(Example(w, (pos, *negs), (3.0, 0.0, 0.0) if scores else None))
    return out


def test_loss_falls(tmp_path, colbert_ai_ckpt):
    cfg = TrainConfig(steps=80, batch_size=8, lr=3e-3, save_every=80, warmup_steps=2)
    out = train(str(colbert_ai_ckpt), toy_examples(), tmp_path / "run", cfg, show_progress=False)
    assert out["loss_last"] < 0.5 * out["loss_first"], out
    # checkpoint round trip: the saved model gives the same embeddings as the in-memory one
    reloaded = ColBERT.from_pretrained(out["checkpoint"], dtype="float32")
    texts = ["python kernel", "music guitar piano"]
    assert torch.allclose(reloaded.encode_queries(texts), out["model"].encode_queries(texts), atol=1e-5)
    assert reloaded.identity == out["model"].identity


def test_distillation_and_log(tmp_path, colbert_ai_ckpt):
    log = tmp_path / "log.jsonl"
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, save_every=4, log_file=str(log), in_batch_negatives=False)
    train(str(colbert_ai_ckpt), toy_examples(16, scores=True), tmp_path / "run", cfg, show_progress=False)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(rows) == 4 and "kl" in rows[0] and "ce" in rows[0]


def test_resume_equals_uninterrupted(tmp_path, colbert_ai_ckpt):
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, save_every=3, warmup_steps=2)
    data = toy_examples(24, seed=3)
    straight = train(str(colbert_ai_ckpt), data, tmp_path / "a", cfg, show_progress=False)["model"]

    calls = {"n": 0}

    def crashing_scores(model, queries, passages):
        from colbert_retriever.training.losses import colbert_scores

        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return colbert_scores(model, queries, passages)

    with pytest.raises(KeyboardInterrupt):
        train(str(colbert_ai_ckpt), data, tmp_path / "b", cfg, show_progress=False, score_fn=crashing_scores)
    assert (tmp_path / "b" / "checkpoint-3").exists() and not (tmp_path / "b" / "checkpoint-6").exists()
    resumed = train(str(colbert_ai_ckpt), data, tmp_path / "b", cfg, show_progress=False)
    assert resumed["trained_steps"] == 3
    for (n1, p1), (n2, p2) in zip(straight.state_dict().items(), resumed["model"].state_dict().items()):
        assert torch.allclose(p1, p2, atol=1e-6), n1


def test_head_only_training_freezes_backbone(tmp_path, colbert_ai_ckpt):
    before = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32")
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, save_every=3, train_layers=0)
    after = train(str(colbert_ai_ckpt), toy_examples(8), tmp_path / "r", cfg, show_progress=False)["model"]
    emb = lambda m: m.backbone.embeddings.word_embeddings.weight  # noqa: E731
    assert torch.equal(emb(before), emb(after))
    assert not torch.equal(before.linear.weight, after.linear.weight)


def test_data_formats_and_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n1"]}) + "\n")
    assert load_examples(good) == [Example("q", ("p", "n1"))]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"]}) + "\n{oops\n")
    with pytest.raises(InvalidArgument, match="bad.jsonl:2"):
        load_examples(bad)
    bad.write_text(json.dumps({"query": "q", "passages": ["a", "b"], "scores": [1.0]}) + "\n")
    with pytest.raises(InvalidArgument, match="bad.jsonl:1.*scores"):
        load_examples(bad)
    # colbert-ai: triples of ids + collection.tsv + queries.tsv
    d = tmp_path / "cai"
    d.mkdir()
    (d / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n2\tthird passage\n")
    (d / "queries.tsv").write_text("10\ta query\n")
    (d / "triples.jsonl").write_text("[10, 0, 2]\n[10, [1, 5.0], [2, 1.0]]\n")
    ex = load_examples(d / "triples.jsonl")
    assert ex[0] == Example("a query", ("first passage", "third passage"))
    assert ex[1].scores == (5.0, 1.0)
    (d / "triples.jsonl").write_text("[10, 0, 7]\n")
    with pytest.raises(InvalidArgument, match=r"triples.jsonl:1.*\['7'\]"):
        load_examples(d / "triples.jsonl")


def test_train_cli(tmp_path, colbert_ai_ckpt, capsys):
    from colbert_retriever.cli.main import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"query": e.query, "positive": e.passages[0],
                                          "negatives": list(e.passages[1:])})
                              for e in toy_examples(8)))
    assert main(["train", "--data", str(data), "--model", str(colbert_ai_ckpt), "--out", str(tmp_path / "o"),
                 "--steps", "2", "--batch-size", "4", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trained_steps"] == 2 and (tmp_path / "o" / "checkpoint-2" / "model.safetensors").exists()


def test_marker_warning_only_where_it_applies_naming_the_final_checkpoint(tmp_path, colbert_ai_ckpt, caplog):
    """A model without markers (like the default one): one warning, naming the checkpoint the user gets (not the
    temporary folder each save writes first, and not once per checkpoint). A model with markers: none."""
    import logging

    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, save_every=2, train_layers=0)
    plain = ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32")
    plain.set_config(plain.config.replace(query_marker=None, doc_marker=None))
    with caplog.at_level(logging.WARNING, logger="colbert_retriever"):
        out = train(plain, toy_examples(16), tmp_path / "plain", cfg, show_progress=False)
    notes = [r.getMessage() for r in caplog.records if "without a" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith(f"{out['checkpoint']}: ") and ".tmp" not in notes[0], notes
    assert (tmp_path / "plain" / "checkpoint-4").is_dir() and out["checkpoint"].endswith("checkpoint-4")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="colbert_retriever"):
        train(str(colbert_ai_ckpt), toy_examples(16), tmp_path / "marked", cfg, show_progress=False)
    assert not [r for r in caplog.records if "without a" in r.getMessage()]
