"""The CLI's commands (``cli.py`` parses the arguments): each calls the public API and prints one JSON object or a
short report; ``cli_message`` turns a library error's Python remedies into CLI flags."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

CLI_REMEDIES = (
    ("pass on_conflict='replace' or use upsert to replace them", "pass --on-conflict replace"),
    ("call index.add_lexical() once (or build with lexical=True)",
     "run `colbert-retriever lexical INDEX` once (or index with --lexical)"),
    ("if_exists='upsert' adds to it by id, 'overwrite' replaces it", "--if-exists upsert adds to it by id, "
     "--if-exists overwrite (or --overwrite) replaces it"),
    ("pass if_exists='overwrite' to rebuild it", "pass --if-exists overwrite to rebuild it"),
    ("Pass truncate='chunk' to index them as passages, or truncate='warn' to index only their start",
     "pass --truncate chunk to index them as passages, or --truncate warn to index only their start"),
    ("pass model=<the checkpoint folder>", "pass --model <the checkpoint folder>"),
    ("pass a larger lock_timeout to wait longer", "retry when the other writer is done"),
)
"""Library error remedies (Python arguments) and the CLI flags that say the same."""


def cli_message(message: str) -> str:
    """A library error as the CLI prints it: one line, remedies naming CLI flags."""
    for python, cli in CLI_REMEDIES:
        message = message.replace(python, cli)
    return " ".join(message.split())


def _user_errors() -> tuple:
    from ..errors import ColbertRetrieverError

    return (ColbertRetrieverError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            json.JSONDecodeError, UnicodeDecodeError)


def _load(data: str, limit, format: str = "auto"):
    from ..evaluation import load_documents

    ids, texts, metas, layout = load_documents(Path(data), limit=limit, format=format)
    return ids, texts, metas, layout


def _changes(report: dict, removed: int = 0) -> dict:
    """What a write did, as the CLI prints it: documents added, replaced (text or metadata changed), unchanged
    (skipped, nothing re-encoded) and removed."""
    return {"added": len(report.get("added", [])), "replaced": len(report.get("replaced", [])),
            "unchanged": len(report.get("unchanged", [])), "removed": removed}


def _cmd_index(args) -> int:
    from .. import CodecConfig, Index, load_model
    from ..evaluation import TITLE_JOIN
    from ..store.storage import holds_our_index

    t0 = time.perf_counter()
    ids, texts, metas, layout = _load(args.data, args.limit, args.format)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.doc_maxlen is not None:
        model = model.with_config(model.config.replace(doc_maxlen=args.doc_maxlen))
    if_exists = "overwrite" if args.overwrite else args.if_exists
    removed = 0
    if args.prune and if_exists == "upsert" and holds_our_index(Path(args.index)):  # first: DATA names the rest
        old = Index.open(args.index, model=model, device=args.device)
        gone = sorted(set(old.ids()) - set(ids))
        removed = old.delete(gone) if gone else 0
        old.close()
    report: dict = {}
    idx = Index.build(args.index, texts, ids=ids, metadatas=metas, model=model, nbits=args.nbits, device=args.device,
                      codec_config=CodecConfig(nbits=args.nbits), show_progress=False if args.quiet else None,
                      if_exists=if_exists, truncate=args.truncate, lexical=args.lexical, report=report,
                      provenance={"data": str(args.data), "layout": layout, "title_join": TITLE_JOIN},
                      pool_factor=args.pool_factor)
    meta = idx.metadata
    print(json.dumps({"index": str(args.index), **_changes(report, removed), "documents": len(idx),
                      "rows": meta["counts"]["live"], "embeddings": meta["counts"]["embeddings"],
                      "num_centroids": meta["codec"]["num_centroids"], "generation": meta["generation"],
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def _search_kwargs(args) -> dict:
    out = {k: getattr(args, k) for k in ("ncells", "centroid_score_threshold", "ndocs")
           if getattr(args, k, None) is not None}
    if getattr(args, "exhaustive", False):
        out["exhaustive"] = True
    return out


def _json_arg(text, what: str):
    from ..errors import InvalidArgument

    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{what} is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None


def _cmd_search(args) -> int:
    from .. import Index

    idx = Index.open(args.index, device=getattr(args, "device", None))
    hits = idx.search(args.query, k=args.k, filter=_json_arg(args.filter, "--filter"), mode=args.mode,
                      **_search_kwargs(args))
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], ensure_ascii=False))
    elif not hits:
        print("no results: no document matched" + (" the filter" if args.filter else "")
              + (" (BM25 needs a query word that a document holds)" if args.mode == "bm25" else ""))
    else:
        for h in hits:
            text = " ".join(h.text.split())
            print(f"{h.rank:3d}  {h.score:7.3f}  {h.id}  {text[:100]}")
    return 0


def _cmd_eval(args) -> int:
    from .. import Index
    from ..errors import InvalidArgument
    from ..evaluation import evaluate

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
    from .. import Index

    t0 = time.perf_counter()
    ids, texts, metas, _ = _load(args.data, None, args.format)
    idx = Index.open(args.index, device=getattr(args, "device", None))
    before = len(idx)
    report: dict = {}
    idx.add(texts, ids=ids, metadatas=metas, on_conflict=args.on_conflict, truncate=args.truncate,
            show_progress=False if args.quiet else len(texts) > 256, report=report)
    print(json.dumps({"index": str(args.index), **_changes(report), "documents_before": before,
                      "documents": len(idx), "generation": idx.generation, "seconds": round(time.perf_counter() - t0,
                                                                                             3)}))
    return 0


def _cmd_delete(args) -> int:
    from .. import Index
    from ..errors import InvalidArgument

    flt = _json_arg(args.filter, "--filter")
    if not args.ids and flt is None:
        raise InvalidArgument("give ids to delete or --filter JSON (--filter '{}' deletes everything)")
    idx = Index.open(args.index, device=getattr(args, "device", None))
    n = idx.delete(args.ids or None, filter=flt)
    print(json.dumps({"index": str(args.index), "deleted": n, "documents": len(idx)}))
    return 0


def _cmd_info(args) -> int:
    from .. import Index

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
            print(f"precision    documents {pr['documents']}"
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


def _cmd_compact(args) -> int:
    from .. import Index

    idx = Index.open(args.index, device=getattr(args, "device", None))
    before = idx.metadata
    choice = {"auto": None, "yes": True, "no": False}
    idx.compact(recluster=choice[args.recluster], reencode=choice[args.reencode], show_progress=not args.quiet)
    after = idx.metadata
    print(json.dumps({"index": str(args.index), "documents": len(idx), "removed_rows": before["counts"]["deleted"],
                      "segments_before": len(before["segments"]), "segments": len(after["segments"]),
                      "reclustered": after["codec"]["files"] != before["codec"]["files"],
                      "generation": idx.generation}))
    return 0


def _cmd_lexical(args) -> int:
    from .. import Index

    idx = Index.open(args.index)
    had = idx.has_lexical
    idx.add_lexical()
    print(json.dumps({"index": str(args.index), "lexical": True, "added": not had, "generation": idx.generation}))
    return 0


def _cmd_serve(args) -> int:
    from ..serve.server import run_forever

    run_forever(args.index, host=args.host, port=args.port, replicas=args.replicas,
                max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, threads=args.threads,
                model=args.model)
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
    from ..training import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, save_every=args.save_every)
    out = train(args.model, args.data, args.out, cfg, show_progress=not args.quiet)
    out.pop("model")
    print(json.dumps(out))
    return 0


