"""``colbert-retriever`` command line.

A user mistake (bad input, a missing or corrupt index, a bad argument) exits 2 with one line on stderr; an
unexpected internal error keeps its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DESCRIPTION = """\
ColBERTv2 late-interaction retrieval: build a compressed index, search it, update it, evaluate it.

examples:
  colbert-retriever index docs/ my_index                  # a folder of .txt/.md files (id = relative path)
  colbert-retriever index docs/ my_index --prune          # again after editing: changed files replaced, removed gone
  colbert-retriever index corpus.jsonl my_index           # {"_id", "title"?, "text"} per line, or a BEIR folder
  colbert-retriever search my_index "what is late interaction?" -k 5
  colbert-retriever add my_index more.jsonl               # ids already there are replaced (upsert)
  colbert-retriever delete my_index doc-3 doc-7           # or --filter '{"source": "old.pdf"}'
  colbert-retriever compact my_index                      # rewrite without deleted documents
  colbert-retriever lexical my_index                      # give an index its BM25 side (--mode bm25|hybrid)
  colbert-retriever info my_index --check
  colbert-retriever eval beir/scifact my_index --json     # nDCG@10, MRR@10, recall, latency
  colbert-retriever serve my_index --port 8000            # HTTP JSON API (Ray Serve; see /openapi.json)
"""


from . import commands as c  # noqa: E402


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
    from .. import __version__

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
    s.add_argument("--if-exists", choices=("upsert", "overwrite", "error"), default="upsert",
                   help="an index already at INDEX: upsert (default: a document is known by its id (a text file's "
                        "relative path, a JSONL/BEIR _id); a new id is added, a document whose text or metadata "
                        "changed is replaced (all its passages), an identical one is skipped, so a re-run changes "
                        "nothing), overwrite (atomically) or error. Prints the counts added / replaced / unchanged / "
                        "removed")
    s.add_argument("--prune", action="store_true",
                   help="also delete the documents of the index whose id DATA no longer has (sync the index with a "
                        "folder whose files were removed)")
    s.add_argument("--overwrite", action="store_true", help="the same as --if-exists overwrite")
    s.add_argument("--lexical", action="store_true", help="also build the BM25 side (for --mode bm25/hybrid)")
    _add_format(s)
    _add_truncate(s, "chunk")
    s.add_argument("--quiet", action="store_true", help="no progress bars (shown for more than 256 passages)")
    _add_device(s)
    s.add_argument("--pool-factor", type=positive_int, default=None,
                   help="merge each document's token embeddings into 1/N as many (hierarchical clustering; 1: none; "
                        "default: 2 for a new index, an existing one keeps the factor it records; later adds pool "
                        "alike)")
    s.set_defaults(func=c._cmd_index)

    s = sub.add_parser("search", help="search an index", description="Search an index; prints rank, score, id, "
                                                                     "text (or --json: a list of hits).")
    s.add_argument("index", help="the index folder")
    s.add_argument("query", help="the query text")
    s.add_argument("-k", type=positive_int, default=10, help="number of documents to return (default 10)")
    s.add_argument("--filter", default=None, help='JSON metadata filter, e.g. \'{"year": {"$gte": 2020}}\'')
    s.add_argument("--json", action="store_true", help="print one JSON array of hits")
    _add_knobs(s)
    _add_device(s)
    s.set_defaults(func=c._cmd_search)

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
    s.set_defaults(func=c._cmd_eval)

    s = sub.add_parser("add", help="add documents to an index", description="Add documents (same DATA forms as "
                                                                              "index) to an existing index. Atomic.")
    s.add_argument("index", help="the index folder")
    s.add_argument("data", help=DATA_HELP)
    s.add_argument("--on-conflict", choices=("error", "replace"), default="replace",
                   help="an id already in the index: replace (default: upsert, unchanged documents skipped, so a "
                        "re-run changes nothing) or error (nothing written)")
    _add_format(s)
    _add_truncate(s, "chunk")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(s)
    s.set_defaults(func=c._cmd_add)

    s = sub.add_parser("delete", help="delete documents by id or metadata filter",
                       description="Delete documents by id, by --filter, or both (documents matching both). Atomic.")
    s.add_argument("index", help="the index folder")
    s.add_argument("ids", nargs="*", help="document ids")
    s.add_argument("--filter", default=None, help="JSON metadata filter ('{}' matches every document)")
    s.set_defaults(func=c._cmd_delete)

    s = sub.add_parser("info", help="show an index's counts, model, codec, size and provenance")
    s.add_argument("index", help="the index folder")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--check", action="store_true",
                   help="also read everything: every file's checksum, SQLite's and FTS5's integrity checks "
                        "(Index.open(verify='deep')); exit 2 naming the problem when one fails")
    s.set_defaults(func=c._cmd_info)

    s = sub.add_parser("compact", help="rewrite an index without its deleted documents",
                       description="Rewrite the index in one segment without deleted documents; re-train the "
                                   "centroids when the collection grew past them (auto) or when asked. Atomic.")
    s.add_argument("index", help="the index folder")
    s.add_argument("--recluster", choices=("auto", "yes", "no"), default="auto",
                   help="re-train the centroids (auto: when more than half of the embeddings came after them)")
    s.add_argument("--reencode", choices=("auto", "yes", "no"), default="auto",
                   help="when re-training, encode the stored texts again (auto: for indexes of up to 200k "
                        "embeddings) instead of re-training on the decompressed embeddings")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(s)
    s.set_defaults(func=c._cmd_compact)

    s = sub.add_parser("lexical", help="give an index its lexical (BM25) side",
                       description="Index every stored text with SQLite FTS5 so that search --mode bm25, hybrid and "
                                   "bm25_rerank work; later writes keep it in step. Idempotent.")
    s.add_argument("index", help="the index folder")
    s.set_defaults(func=c._cmd_lexical)

    s = sub.add_parser("serve", help="serve an index (or a sharded index) over HTTP with Ray Serve",
                       description="Serve INDEX (an index folder, or a sharded index's) over HTTP: search, add, "
                                   "upsert, delete, get, health; the OpenAPI description at /openapi.json. "
                                   "Concurrent searches are encoded in one forward pass (--max-batch-size). Needs "
                                   "the [serve] extra. Runs until interrupted (Ctrl-C).")
    s.add_argument("index", help="the index folder (or sharded index folder)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    s.add_argument("--replicas", type=positive_int, default=1, help="replicas of the index (default 1)")
    s.add_argument("--max-batch-size", type=positive_int, default=32,
                   help="searches encoded in one forward pass (default 32; 1 = no batching)")
    s.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    s.add_argument("--threads", type=positive_int, default=None, help="search threads per replica")
    s.add_argument("--model", default=None, help="query encoder (default: the index's model)")
    s.set_defaults(func=c._cmd_serve)

    s = sub.add_parser("bench", help="run benchmarks/run.py (source checkout)")
    s.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    s.set_defaults(func=c._cmd_bench)

    s = sub.add_parser("train", help="fine-tune a model (see colbert_retriever.training)")
    s.add_argument("--data", required=True, help="training triples (see the README)")
    s.add_argument("--model", default="default", help="hub id, checkpoint folder or 'default'")
    s.add_argument("--out", required=True, help="output checkpoint folder")
    s.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps")
    s.add_argument("--batch-size", type=positive_int, default=16, help="queries per step")
    s.add_argument("--lr", type=float, default=3e-5, help="learning rate")
    s.add_argument("--save-every", type=positive_int, default=500, help="save a checkpoint every N steps")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=c._cmd_train)
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
    except c._user_errors() as e:
        print(f"colbert-retriever {args.command}: error: {c.cli_message(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
