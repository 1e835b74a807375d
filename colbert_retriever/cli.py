"""``colbert-retriever`` command line.

A user mistake (bad input, a missing or corrupt index, a bad argument) exits 2 with one line on stderr; an
unexpected internal error keeps its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DESCRIPTION = """\
ColBERTv2 late-interaction retrieval: build a compressed index, search it, update it, evaluate it.

examples:
  colbert-retriever index docs/ my_index                  # a folder of .txt/.md files (id = relative path)
  colbert-retriever index corpus.jsonl my_index           # {"_id", "title"?, "text"} per line, or a BEIR folder
  colbert-retriever search my_index "what is late interaction?" -k 5
  colbert-retriever add my_index more.jsonl --on-conflict replace
  colbert-retriever delete my_index doc-3 doc-7           # or --filter '{"source": "old.pdf"}'
  colbert-retriever info my_index
  colbert-retriever eval beir/scifact my_index --json     # nDCG@10, MRR@10, recall, latency
"""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a negative or zero count is refused, never read as "all")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


DATA_HELP = ("BEIR folder, .jsonl[.gz] file, colbert-ai/LoTTE collection.tsv (or its folder), or folder of text "
             "files")


def _user_errors() -> tuple:
    from .errors import ColbertRetrieverError

    return (ColbertRetrieverError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            json.JSONDecodeError, UnicodeDecodeError)


def _load(data: str, limit, format: str = "auto"):
    from .evaluation import load_documents

    ids, texts, metas, layout = load_documents(Path(data), limit=limit, format=format)
    return ids, texts, metas, layout


def _cmd_index(args) -> int:
    from . import CodecConfig, Index, load_model
    from .errors import InvalidArgument
    from .evaluation import TITLE_JOIN

    ids, texts, metas, layout = _load(args.data, args.limit, args.format)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.doc_maxlen is not None:
        model = model.with_config(model.config.replace(doc_maxlen=args.doc_maxlen))
    try:
        idx = Index.build(args.index, texts, ids=ids, metadatas=metas, model=model, nbits=args.nbits,
                          device=args.device,
                          codec_config=CodecConfig(nbits=args.nbits), show_progress=not args.quiet,
                          overwrite=args.overwrite, truncate=args.truncate, lexical=args.lexical,
                          provenance={"data": str(args.data), "layout": layout, "title_join": TITLE_JOIN})
    except InvalidArgument as e:
        raise InvalidArgument(str(e).replace("pass overwrite=True (CLI: --overwrite)", "pass --overwrite")) from None
    meta = idx.metadata
    print(json.dumps({"index": str(args.index), "documents": len(idx), "rows": meta["counts"]["live"],
                      "embeddings": meta["counts"]["embeddings"], "num_centroids": meta["codec"]["num_centroids"],
                      "build_seconds": meta["provenance"]["build_seconds"]}))
    return 0


def _search_kwargs(args) -> dict:
    out = {k: getattr(args, k) for k in ("ncells", "centroid_score_threshold", "ndocs")
           if getattr(args, k, None) is not None}
    if getattr(args, "exhaustive", False):
        out["exhaustive"] = True
    return out


def _json_arg(text, what: str):
    from .errors import InvalidArgument

    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{what} is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None


def _cmd_search(args) -> int:
    from . import Index

    idx = Index.open(args.index, device=getattr(args, "device", None))
    hits = idx.search(args.query, k=args.k, filter=_json_arg(args.filter, "--filter"), mode=args.mode,
                      **_search_kwargs(args))
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], ensure_ascii=False))
    else:
        for h in hits:
            text = " ".join(h.text.split())
            print(f"{h.rank:3d}  {h.score:7.3f}  {h.id}  {text[:100]}")
    return 0


def _cmd_eval(args) -> int:
    from . import Index
    from .errors import InvalidArgument
    from .evaluation import evaluate

    data = Path(args.data)
    if not data.is_dir():
        raise InvalidArgument(f"eval needs a judged folder (BEIR, colbert-ai TSV or LoTTE); {data} is "
                              f"{'a file' if data.exists() else 'missing'}")
    idx = Index.open(args.index, device=getattr(args, "device", None))
    drop = {"auto": None, "yes": True, "no": False}[args.drop_query_id]
    m = evaluate(idx, data, k=max(args.k, 100), format=args.format, split=args.split, drop_query_id=drop,
                 mode=args.mode, **_search_kwargs(args))
    if args.json:
        print(json.dumps(m))
    else:
        for key, v in m.items():
            print(f"{key:16s} {v:.4f}" if isinstance(v, float) else f"{key:16s} {v}")
    return 0


def _cmd_add(args) -> int:
    from . import Index

    ids, texts, metas, _ = _load(args.data, None, args.format)
    idx = Index.open(args.index, device=getattr(args, "device", None))
    before = len(idx)
    idx.add(texts, ids=ids, metadatas=metas, on_conflict=args.on_conflict, truncate=args.truncate,
            show_progress=not args.quiet)
    print(json.dumps({"index": str(args.index), "added": len(ids), "documents_before": before,
                      "documents": len(idx), "generation": idx.generation}))
    return 0


def _cmd_delete(args) -> int:
    from . import Index
    from .errors import InvalidArgument

    flt = _json_arg(args.filter, "--filter")
    if not args.ids and flt is None:
        raise InvalidArgument("give ids to delete or --filter JSON (--filter '{}' deletes everything)")
    idx = Index.open(args.index, device=getattr(args, "device", None))
    n = idx.delete(args.ids or None, filter=flt)
    print(json.dumps({"index": str(args.index), "deleted": n, "documents": len(idx)}))
    return 0


def _cmd_info(args) -> int:
    from . import Index

    idx = Index.open(args.index, verify="deep" if args.check else False)
    meta = idx.metadata
    size = sum(f.stat().st_size for f in Path(args.index).iterdir() if f.is_file())
    info = {"index": str(args.index), "format_version": meta["format_version"],
            "library_version": meta["library_version"], "generation": meta["generation"],
            "documents": len(idx), "counts": meta["counts"],
            "model": {"name": meta["model"]["name"], "identity": meta["model"]["identity"],
                      **{k: meta["model"]["encoder_config"].get(k) for k in ("dim", "doc_maxlen", "query_maxlen")}},
            "codec": {"nbits": meta["codec"]["config"].get("nbits"), "num_centroids": meta["codec"]["num_centroids"],
                      "avg_residual": meta["codec"]["avg_residual"]},
            "segments": len(meta["segments"]), "size_bytes": size, "lexical": idx.has_lexical,
            "precision": meta["provenance"].get("precision"), "provenance": meta["provenance"]}
    if args.check:
        info["check"] = "ok"
    if args.json:
        print(json.dumps(info))
    else:
        c = meta["counts"]
        print(f"index        {info['index']} (format {info['format_version']}, generation {info['generation']})")
        print(f"documents    {info['documents']} live ({c['live']} rows incl. passages, {c['deleted']} deleted "
              f"awaiting compact), {c['embeddings']} token embeddings")
        m = info["model"]
        print(f"model        {m['name']} (weights {m['identity']}; dim {m['dim']}, doc_maxlen {m['doc_maxlen']})")
        k = info["codec"]
        print(f"codec        {k['nbits']} bits, {k['num_centroids']} centroids, {info['segments']} segment(s)")
        print(f"size         {size / 2**20:.1f} MiB; lexical (BM25) side: {'yes' if info['lexical'] else 'no'}")
        pr = info["precision"]
        if pr:
            print(f"precision    documents {pr['documents']}, queries {pr['queries']}"
                  f"{' (float16 weights)' if pr.get('fp16_query_weights') else ''}, centroid assignment "
                  f"{pr['assignment']}")
        else:
            print("precision    not recorded (built before colbert-retriever 0.2)")
        p = meta["provenance"]
        print(f"built        {p.get('created')} on {p.get('host')} in {p.get('build_seconds')} s "
              f"(library {meta['library_version']}); updated {p.get('updated')}")
        if args.check:
            print("check        ok: every file's checksum, the document store and its lexical side")
    return 0


def _cmd_bench(args) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not script.exists():
        raise FileNotFoundError("benchmarks/run.py is part of the source checkout; run from a clone of the repo")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_train(args) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, save_every=args.save_every)
    out = train(args.model, args.data, args.out, cfg, show_progress=not args.quiet)
    out.pop("model")
    print(json.dumps(out))
    return 0


def _add_device(s) -> None:
    s.add_argument("--device", default=None,
                   help="where the model and the index arrays live: cpu (default), cuda, cuda:N or auto (CUDA when "
                        "present)")


def _add_format(s) -> None:
    s.add_argument("--format", choices=("auto", "beir", "jsonl", "text", "colbert", "lotte"), default="auto",
                   help="DATA's layout (auto: inferred): BEIR folder, .jsonl[.gz], folder of text files, colbert-ai "
                        "TSV (collection.tsv, queries.tsv, qrels), LoTTE (collection.tsv, questions.*.tsv, "
                        "qas.*.jsonl)")


def _add_knobs(s) -> None:
    s.add_argument("--mode", choices=("colbert", "bm25", "hybrid", "bm25_rerank"), default="colbert",
                   help="colbert (default), bm25, hybrid (both, fused) or bm25_rerank; all but colbert need an "
                        "index built with --lexical")
    g = s.add_argument_group("search knobs (PLAID; defaults depend on k)")
    g.add_argument("--exhaustive", action="store_true", help="score every document exactly (the reference; slow)")
    g.add_argument("--ncells", type=positive_int, help="centroids probed per query token")
    g.add_argument("--centroid-score-threshold", type=float,
                   help="stage 2 = PLAID's pruned centroid interaction with this threshold (default: none, "
                        "candidates scored from their probed cells)")
    g.add_argument("--ndocs", type=positive_int, help="documents kept after stage 2 (ndocs // 4 are scored exactly)")


def _add_truncate(s, default: str) -> None:
    s.add_argument("--truncate", choices=("chunk", "warn", "error"), default=default,
                   help="texts longer than the model's doc_maxlen: chunk = index overlapping passages under the "
                        "document's id (default); warn = index the start and report the tokens dropped; "
                        "error = refuse")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the command's usage is one ``--help`` away) and no exit from inside."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="colbert-retriever", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"colbert-retriever {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="build an index from documents",
                       description="Build an index. DATA: a BEIR folder (corpus.jsonl), a .jsonl[.gz] file of "
                                   "{_id|id, title?, text, ...} (other fields become metadata), a colbert-ai or "
                                   "LoTTE folder or file (collection.tsv: pid<TAB>passage[<TAB>title]), or a "
                                   "folder of .txt/.md files (one document per file, id = relative path).")
    s.add_argument("data", help=DATA_HELP)
    s.add_argument("index", help="the index folder to create (new, empty, or an index of ours with --overwrite)")
    s.add_argument("--model", default="default", help="hub id, checkpoint folder or 'default' (offline MiniLM)")
    s.add_argument("--nbits", type=int, choices=(1, 2, 4), default=2, help="residual bits per dimension")
    s.add_argument("--doc-maxlen", type=positive_int, default=None,
                   help="document tokens kept (default: the model's; at least 3)")
    s.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="encoder compute dtype (auto: bf16 on CPUs with native bf16)")
    s.add_argument("--limit", type=positive_int, default=None, help="index only the first N documents (N >= 1)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing index (atomically)")
    s.add_argument("--lexical", action="store_true", help="also build the BM25 side (for --mode bm25/hybrid)")
    _add_format(s)
    _add_truncate(s, "chunk")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(s)
    s.set_defaults(func=_cmd_index)

    s = sub.add_parser("search", help="search an index", description="Search an index; prints rank, score, id, "
                                                                     "text (or --json: a list of hits).")
    s.add_argument("index", help="the index folder")
    s.add_argument("query", help="the query text")
    s.add_argument("-k", type=positive_int, default=10, help="number of documents to return (default 10)")
    s.add_argument("--filter", default=None, help='JSON metadata filter, e.g. \'{"year": {"$gte": 2020}}\'')
    s.add_argument("--json", action="store_true", help="print one JSON array of hits")
    _add_knobs(s)
    _add_device(s)
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("eval", help="evaluate an index on a judged BEIR set",
                       description="Search every judged query of a BEIR, colbert-ai TSV or LoTTE folder and "
                                   "print nDCG@10, MRR@10, recall@10/100, success@5 (LoTTE's measure) and "
                                   "latency.")
    s.add_argument("data", help="judged folder: BEIR, colbert-ai TSV or LoTTE")
    s.add_argument("index", help="an index built from that folder")
    s.add_argument("-k", type=positive_int, default=10, help="cut-off reported (documents retrieved: max(k, 100))")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _add_format(s)
    s.add_argument("--split", choices=("search", "forum"), default="search", help="LoTTE query set")
    s.add_argument("--drop-query-id", choices=("auto", "yes", "no"), default="auto",
                   help="drop a hit whose id equals the query id (BEIR's rule; auto: only for arguana and quora)")
    _add_knobs(s)
    _add_device(s)
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("add", help="add documents to an index", description="Add documents (same DATA forms as "
                                                                              "index) to an existing index. Atomic.")
    s.add_argument("index", help="the index folder")
    s.add_argument("data", help=DATA_HELP)
    s.add_argument("--on-conflict", choices=("error", "replace"), default="error",
                   help="an id already in the index: error (default, nothing written) or replace (upsert)")
    _add_format(s)
    _add_truncate(s, "chunk")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(s)
    s.set_defaults(func=_cmd_add)

    s = sub.add_parser("delete", help="delete documents by id or metadata filter",
                       description="Delete documents by id, by --filter, or both (documents matching both). Atomic.")
    s.add_argument("index", help="the index folder")
    s.add_argument("ids", nargs="*", help="document ids")
    s.add_argument("--filter", default=None, help="JSON metadata filter ('{}' matches every document)")
    s.set_defaults(func=_cmd_delete)

    s = sub.add_parser("info", help="show an index's counts, model, codec, size and provenance")
    s.add_argument("index", help="the index folder")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--check", action="store_true",
                   help="also read everything: every file's checksum, SQLite's and FTS5's integrity checks "
                        "(Index.open(verify='deep')); exit 2 naming the problem when one fails")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("bench", help="run benchmarks/run.py (source checkout)")
    s.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("train", help="fine-tune a model (see colbert_retriever.training)")
    s.add_argument("--data", required=True, help="training triples (see the README)")
    s.add_argument("--model", default="default", help="hub id, checkpoint folder or 'default'")
    s.add_argument("--out", required=True, help="output checkpoint folder")
    s.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps")
    s.add_argument("--batch-size", type=positive_int, default=16, help="queries per step")
    s.add_argument("--lr", type=float, default=3e-5, help="learning rate")
    s.add_argument("--save-every", type=positive_int, default=500, help="save a checkpoint every N steps")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_train)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except _UsageError:
        return 2
    try:
        return args.func(args)
    except _user_errors() as e:
        msg = " ".join(str(e).split())  # one line
        print(f"colbert-retriever {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
