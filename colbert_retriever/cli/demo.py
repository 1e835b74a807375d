"""``python -m colbert_retriever.cli.demo``: index the shipped sample collection (Python standard-library docstrings)
with the offline default model, then search it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

QUERIES = [
    "how do I parse JSON",
    "read a file line by line",
    "generate a random integer",
    "split a string into a list using a shell-like syntax",
    "current date and time",
    "compute a hash of some bytes",
]


def main(argv=None):
    from .. import ColBERT, Index
    from ..evaluation import load_corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[2]  # the repository (examples/), as before cli/ was a package
    ap.add_argument("--data", default=str(here / "examples" / "stdlib_docs.jsonl"))
    ap.add_argument("--index", default=str(here / ".demo_index"))
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args(argv)

    ids, texts, metas = load_corpus(Path(args.data))
    t0 = time.perf_counter()
    model = ColBERT.default()
    t1 = time.perf_counter()
    print(f"loaded {model} in {t1 - t0:.1f}s; indexing {len(texts)} docstrings from {args.data}")
    # "overwrite" replaces an index of ours atomically and refuses a folder holding anything else
    index = Index.build(args.index, texts, ids=ids, metadatas=metas, model=model, if_exists="overwrite")
    t2 = time.perf_counter()
    meta = index.metadata
    print(f"built {args.index} in {t2 - t1:.1f}s: {meta['counts']['documents']} docs, "
          f"{meta['counts']['embeddings']} token embeddings (pool_factor {meta['pooling']['pool_factor']}), "
          f"{meta['codec']['num_centroids']} centroids, nbits=2")
    index = Index.open(args.index)
    for q in QUERIES:
        t = time.perf_counter()
        hits = index.search(q, k=args.k)
        ms = (time.perf_counter() - t) * 1000
        print(f"\nQ: {q}   ({ms:.1f} ms)")
        for h in hits:
            print(f"  {h.rank}. {h.score:6.2f}  {h.id:40s} {h.text[:70]}")
    t = time.perf_counter()
    hits = index.search("open a file", k=3, filter={"module": "gzip"})
    print(f"\nQ: open a file   filter={{'module': 'gzip'}}   ({(time.perf_counter() - t) * 1000:.1f} ms)")
    for h in hits:
        print(f"  {h.rank}. {h.score:6.2f}  {h.id:40s} {h.text[:70]}")


if __name__ == "__main__":
    main()
