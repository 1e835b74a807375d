"""``colbert-retriever`` command line. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _cmd_index(args) -> int:
    from . import ColBERT, CodecConfig, Index
    from .evaluation import TITLE_JOIN, load_corpus

    ids, texts, metas = load_corpus(Path(args.data), limit=args.limit)
    model = ColBERT.from_pretrained(args.model, dtype=args.dtype)
    if args.doc_maxlen:
        model.set_config(model.config.replace(doc_maxlen=args.doc_maxlen))
    idx = Index.build(args.index, texts, ids=ids, metadatas=metas, model=model, nbits=args.nbits,
                      codec_config=CodecConfig(nbits=args.nbits), show_progress=not args.quiet,
                      overwrite=args.overwrite, provenance={"data": str(args.data), "title_join": TITLE_JOIN})
    meta = idx.metadata
    print(json.dumps({"index": str(args.index), "documents": meta["counts"]["documents"],
                      "embeddings": meta["counts"]["embeddings"], "num_centroids": meta["codec"]["num_centroids"],
                      "build_seconds": meta["provenance"]["build_seconds"]}))
    return 0


def _search_kwargs(args) -> dict:
    return {k: getattr(args, k) for k in ("ncells", "centroid_score_threshold", "ndocs")
            if getattr(args, k, None) is not None} | ({"exhaustive": True} if getattr(args, "exhaustive", False) else {})


def _cmd_search(args) -> int:
    from . import Index

    idx = Index.open(args.index)
    flt = json.loads(args.filter) if args.filter else None
    hits = idx.search(args.query, k=args.k, filter=flt, **_search_kwargs(args))
    if args.json:
        print(json.dumps([h.__dict__ for h in hits]))
    else:
        for h in hits:
            print(f"{h.rank:3d}  {h.score:7.3f}  {h.id}  {h.text[:100]}")
    return 0


def _cmd_eval(args) -> int:
    from . import Index
    from .evaluation import evaluate

    idx = Index.open(args.index)
    m = evaluate(idx, Path(args.data), k=max(args.k, 100), **_search_kwargs(args))
    if args.json:
        print(json.dumps(m))
    else:
        for key, v in m.items():
            print(f"{key:16s} {v:.4f}" if isinstance(v, float) else f"{key:16s} {v}")
    return 0


def _cmd_bench(args) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not script.exists():
        raise FileNotFoundError("benchmarks/run.py is part of the source checkout; run from a clone of the repo")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colbert-retriever", description="ColBERTv2 late-interaction retrieval")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("index", help="build an index from a BEIR folder or a .jsonl[.gz] file")
    s.add_argument("data")
    s.add_argument("index")
    s.add_argument("--model", default="default")
    s.add_argument("--nbits", type=int, choices=(1, 2, 4), default=2)
    s.add_argument("--doc-maxlen", type=int, default=None)
    s.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="encoder compute dtype (auto: bf16 on CPUs with native bf16)")
    s.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_index)
    for name, func in (("search", _cmd_search), ("eval", _cmd_eval)):
        s = sub.add_parser(name)
        if name == "search":
            s.add_argument("index")
            s.add_argument("query")
            s.add_argument("--filter", default=None, help="JSON metadata filter")
        else:
            s.add_argument("data")
            s.add_argument("index")
            s.add_argument("--exhaustive", action="store_true")
        s.add_argument("-k", type=int, default=10)
        s.add_argument("--json", action="store_true")
        s.add_argument("--ncells", type=int)
        s.add_argument("--centroid-score-threshold", type=float)
        s.add_argument("--ndocs", type=int)
        s.set_defaults(func=func)
    s = sub.add_parser("bench", help="run benchmarks/run.py (source checkout)")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_bench)
    s = sub.add_parser("train", help="fine-tune a model (see colbert_retriever.training)")
    s.add_argument("--data", required=True)
    s.add_argument("--model", default="default")
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=3e-5)
    s.add_argument("--save-every", type=int, default=500)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, save_every=args.save_every)
    out = train(args.model, args.data, args.out, cfg, show_progress=not args.quiet)
    out.pop("model")
    print(json.dumps(out))
    return 0


def main(argv=None) -> int:
    from .errors import ColbertRetrieverError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ColbertRetrieverError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"colbert-retriever {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
