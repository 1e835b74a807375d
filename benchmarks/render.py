"""Render benchmarks/results/*.json into BENCHMARKS.md (called by run.py and scale.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT  # noqa: E402


def _f(x, nd=3):
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def quality_table(b: dict) -> list[str]:
    cols = [("BM25", lambda r: r.get("bm25")), ("single-vector", lambda r: r.get("single_vector")),
            ("ColBERT PLAID 2b", lambda r: (r.get("colbert_nbits2") or {}).get("plaid")),
            ("ColBERT exhaustive 2b", lambda r: (r.get("colbert_nbits2") or {}).get("exhaustive")),
            ("PLAID 1b", lambda r: (r.get("colbert_nbits1") or {}).get("plaid")),
            ("PLAID 4b", lambda r: (r.get("colbert_nbits4") or {}).get("plaid"))]
    out = []
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        out += [f"\n**{metric}**\n", "| dataset | " + " | ".join(c for c, _ in cols) + " |",
                "|---|" + "---:|" * len(cols)]
        sums = [[] for _ in cols]
        for name, r in b["datasets"].items():
            vals = [(g(r) or {}).get(metric) for _, g in cols]
            for s, v in zip(sums, vals):
                if v is not None:
                    s.append(v)
            out.append(f"| {name} | " + " | ".join(_f(v) for v in vals) + " |")
        out.append("| **mean** | " + " | ".join(_f(sum(s) / len(s)) if s else "–" for s in sums) + " |")
    return out


def speed_table(b: dict) -> list[str]:
    out = ["| dataset | method | build s | docs/s | index MB | B/token | peak RSS build MB | peak RSS serving MB | "
           "p50/p95 ms k=10 excl. enc | p50/p95 ms k=100 excl. enc | query enc p50 ms | end-to-end k=10 p50/p95 ms |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in b["datasets"].items():
        if "bm25" in r:
            x = r["bm25"]
            out.append(f"| {name} | BM25 (bm25s) | {x['build_s']} | | | | | | | {x['latency_ms']['p50']}/"
                       f"{x['latency_ms']['p95']} (incl. tokenising) | | |")
        if "single_vector" in r:
            x = r["single_vector"]
            out.append(f"| {name} | single-vector | {x['build_s']} | {x['docs_per_s']} | {x['index_bytes'] / 2**20:.1f} "
                       f"| | | | | {x['latency_ms_excl_encoding']['p50']}/{x['latency_ms_excl_encoding']['p95']} | "
                       f"{round(x['latency_ms']['p50'] - x['latency_ms_excl_encoding']['p50'], 2)} | |")
        for nb in (2, 1, 4):
            x = r.get(f"colbert_nbits{nb}")
            if not x:
                continue
            for mode in ("plaid", "exhaustive"):
                if mode not in x:
                    continue
                m = x[mode]
                first = mode == "plaid"
                build = f"{x['build_wall_s']}{'*' if x.get('encoding_reused') else ''}" if first else ""
                out.append(
                    f"| {name} | ColBERT {mode} {nb}b | {build} | {x['docs_per_s'] if first and not x.get('encoding_reused') else ''} | "
                    f"{x['index_bytes'] / 2**20:.1f} | {x['bytes_per_token_codes_residuals']} | "
                    f"{x.get('peak_rss_mb_build_process', '') if first else ''} | "
                    f"{x.get('peak_rss_mb_serving_process', '') if first else ''} | "
                    f"{m['latency_ms_excl_encoding_k10']['p50']}/{m['latency_ms_excl_encoding_k10']['p95']} | "
                    f"{m['latency_ms_excl_encoding_k100']['p50']}/{m['latency_ms_excl_encoding_k100']['p95']} | "
                    f"{x['query_encoding_ms']['p50']} | "
                    + (f"{x['end_to_end_ms_k10']['p50']}/{x['end_to_end_ms_k10']['p95']} |"
                       if first and "end_to_end_ms_k10" in x else "|"))
    out.append("\n\\* reuses the cached encoding of the same run (nbits 1 encodes): build time is compression + writing only.")
    return out


def _p50_p95(p) -> str:
    return f"{p['p50']}/{p['p95']}" if p else ""


def detail_table(b: dict) -> list[str]:
    out = ["| dataset | nbits | centroids | embeddings | reconstruction cosine | PLAID top-10 agreement | build stages s "
           "(encode / k-means / compress / write) | batch-32 ms/query | PLAID k=10 p50/p95 ms, fastest of 3 per query |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in b["datasets"].items():
        for nb in (1, 2, 4):
            x = r.get(f"colbert_nbits{nb}")
            if not x:
                continue
            st = x["build_stages_s"]
            out.append(f"| {name} | {nb} | {x['num_centroids']} | {x['embeddings']} | {_f(x.get('reconstruction_cosine'), 4)} | "
                       f"{_f(x.get('plaid_top10_agreement'), 4)} | {st['encode_s']} / {st['kmeans_s']} / "
                       f"{st['compress_s']} / {st['write_s']} | {x['batch32_ms_per_query_excl_encoding']} | "
                       f"{_p50_p95(x.get('plaid', {}).get('latency_ms_excl_encoding_k10_best_of_3'))} |")
    return out


def scale_tables(s: dict) -> list[str]:
    out = ["| passages | embeddings | build s | docs/s | index MB | B/token | peak RSS build MB | "
           "k=10 p50/p95 ms | k=100 p50/p95 ms | k=1000 p50/p95 ms | k=10 first pass p50/p95 ms | "
           "batch-32 ms/query (k=10) | agreement@10 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in s["sizes"]:
        lat = row["latency_ms_excl_encoding"]
        first = row.get("k10_first_pass_ms")
        first = f"{first['p50']}/{first['p95']}" if first else ""
        out.append(f"| {row['passages']} | {row['embeddings']} | {row['build_s']} | {row['docs_per_s']} | "
                   f"{row['index_bytes'] / 2**20:.1f} | {row['bytes_per_token']} | {row['peak_rss_mb_build']} | "
                   + " | ".join(f"{lat[k]['p50']}/{lat[k]['p95']}" for k in ("10", "100", "1000"))
                   + f" | {first} | {row['batch32_ms_per_query']} | {row['agreement_at_10']} |")
    reused = sorted({str(r["build_reused_from"]) for r in s["sizes"] if r.get("build_reused_from")})
    if reused:
        out += ["", f"Build figures of the rows searched again with `--reuse` come from the run of {', '.join(reused)} "
                "(same index folders); the search columns are this run's."]
    if s.get("curve"):
        out += ["", f"Latency vs agreement at k=10 on {s['curve_passages']} passages (PLAID knobs):", "",
                "| ncells | threshold | ndocs | agreement@10 | p50 ms |", "|---:|---:|---:|---:|---:|"]
        for c in s["curve"]:
            out.append(f"| {c['ncells']} | {c['threshold']} | {c['ndocs']} | {c['agreement']} | {c['p50_ms']} |")
    return out


def updates_tables() -> list[str]:
    """Incremental updates before/after index format v2 (benchmarks/updates.py, one JSON per checkout)."""
    runs = {t: json.loads((RESULTS / f"updates-{t}.json").read_text())
            for t in ("before", "after") if (RESULTS / f"updates-{t}.json").exists()}
    if not runs:
        return []
    out = ["## Incremental updates (WordNet glosses; `make bench-updates`)", "",
           "At each size, in a fresh process: open, search, 100 single-document `add` calls, search, `compact()`, "
           "then 19 single-document adds with segment merging off (20 segments). `before` = format v1 (0.1.0, "
           "one inverted file rebuilt per add, residuals concatenated in RAM once there are several segments), "
           "`after` = format v2 (per-segment memory-mapped arrays and inverted files, geometric merging). "
           "Anon = anonymous RSS (heap), File = file-backed RSS (memory-mapped pages the kernel can drop); the "
           "model alone accounts for the first row's numbers. Search latency: k=10, default knobs, excluding query "
           "encoding, 100 one-to-three-word queries. Sizes grow in one index: each size adds the next documents "
           "to the previous size's index (after its measurements), so `before` starts 30k and 100k with the segments "
           "the previous size left.", "",
           "| run | docs | segments at open / after 100 adds | add p50 / mean ms | Anon MB: model / open / after adds | "
           "File MB: open / after adds | search p50 ms: open / after adds / 1 seg (compacted) / 20 seg |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for tag, r in runs.items():
        for row in r["sizes"]:
            mm, mo, ma = row.get("mem_model", {}), row.get("mem_after_open", {}), row.get("mem_after_adds", {})
            out.append(
                f"| {tag} | {row['live']:,} | {row['segments_before']} / {row['segments_after_adds']} | "
                f"{row['add_ms']['p50']} / {row['add_ms_mean']} | {mm.get('RssAnon')} / {mo.get('RssAnon')} / {ma.get('RssAnon')} | "
                f"{mo.get('RssFile')} / {ma.get('RssFile')} | {row['latency_open_ms']['p50']} / "
                f"{row['latency_after_adds_ms']['p50']} / {row['latency_after_compact_ms']['p50']} / "
                f"{row.get('latency_20seg_ms', {}).get('p50')} |")
    m = next(iter(runs.values()))["machine"]
    out += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']} (the two runs one after "
                f"the other on the same machine; a niced test run shared the CPU during most of the `before` run and "
                f"the first minutes of the `after` run, so latencies carry some noise).{_pooled(m)}", ""]
    return out


def _machine_line(m: dict) -> str:
    """The machine a result file was measured on (``common.machine_info``), as one sentence."""
    return (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), {m['date']}."
            + _pooled(m))


def _pooled(m: dict) -> str:
    """What an index built without ``pool_factor`` was, when the run recorded it (``common.machine_info``)."""
    f = m.get("pool_factor_default")
    return f" Indexes built without `pool_factor` were pooled by {f}." if f else ""


def _result(name: str) -> Optional[dict]:
    """benchmarks/results/NAME parsed, or None when that benchmark has not been run."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def hybrid_tables() -> list[str]:
    """BM25 / ColBERT / hybrid / BM25+rerank per shared judged set (benchmarks/hybrid.py)."""
    h = _result("hybrid.json")
    if h is None:
        return []
    labels = [("bm25s_baseline", "BM25 (bm25s baseline)"), ("bm25", "BM25 (our lexical side, FTS5)"),
              ("colbert", "ColBERT (PLAID)"), ("hybrid_rrf", "hybrid, RRF"),
              ("hybrid_normalized", "hybrid, min-max (default)"), ("bm25_rerank", "BM25 top-100 + ColBERT rerank")]
    out = ["## Hybrid retrieval (`make bench-hybrid`)", "",
           "One index per set with its lexical side (`lexical=True`), default model, 2 bits; every judged query, "
           "k=100. Latency per query including query encoding (BM25 needs none). The query-id rule is off "
           "(the new default); the last column shows nDCG@10 with it on, for comparison.", "",
           "| set | method | nDCG@10 | R@100 | Success@5 | p50 / p95 ms | nDCG@10, query-id rule on |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in h["sets"].items():
        for key, label in labels:
            if key not in r:
                continue
            m = r[key]
            lat = m.get("latency_ms")
            lat_s = f"{lat['p50']} / {lat['p95']}" if lat else "—"
            out.append(f"| {name} | {label} | {m['ndcg@10']:.3f} | {m['recall@100']:.3f} | "
                       f"{_f(m.get('success@5'))} | {lat_s} | {m['ndcg@10_query_id_dropped']:.3f} |")
    sets = list(h["sets"].values())
    if sets and all("hybrid_rrf" in r for r in sets):
        for key in ("hybrid_rrf", "hybrid_normalized"):
            gaps = [r[key]["ndcg@10"] - max(r["bm25"]["ndcg@10"], r["colbert"]["ndcg@10"]) for r in sets]
            out.append("")
            out.append(f"{key}: mean nDCG@10 minus the better single method = {sum(gaps) / len(gaps):+.3f} "
                       f"(per set: {', '.join(f'{g:+.3f}' for g in gaps)}).")
    m = h["machine"]
    out += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}.{_pooled(m)}", ""]
    return out


def peers_tables() -> list[str]:
    """benchmarks/results/peers.json (``make bench-peers``): our search against colbert-ai on one machine."""
    d = _result("peers.json")
    if d is None:
        return []
    m = d["machine"]
    e = d["exhaustive"]
    enc = d["query_encoding_ms"]
    out = ["## Against colbert-ai (`make bench-peers`)", "",
           f"scifact ({d['documents']} documents, {d['queries']} queries), one colbert-ai-layout checkpoint loaded by "
           "both (all-MiniLM-L6-v2 + our 128-d head, [MASK] query augmentation to 32, doc_maxlen 180), 2 bits, each "
           "library's own index. Both search the same query embeddings (colbert-ai's encoder; ours differs by max abs "
           f"{d['encoders_max_abs_diff']:.1e} with float32 weights"
           + (f", {d['encoders_max_abs_diff_fp16_query_weights']:.1e} with its default float16 query weights"
              if "encoders_max_abs_diff_fp16_query_weights" in d else "")
           + "); queries interleaved between the libraries, order alternated. "
           "Retrieval excludes query encoding (colbert-ai: `Searcher.dense_search`; ours: the index's PLAID path "
           "without fetching texts). Agreement = share of the library's own exhaustive top-10 (exact MaxSim over its "
           "compressed index) returned; float overlap = share of the top-10 by exact MaxSim over uncompressed "
           "embeddings (the same reference for both).", "",
           "| k | knobs (ncells, threshold, ndocs) | colbert-ai p50 / p95 ms | agreement | nDCG@10 | float overlap "
           "| ours p50 / p95 ms | agreement | nDCG@10 | float overlap | p50 ratio ours/colbert-ai |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = d["runs"]
    for r in runs:
        if r["library"] != "colbert_ai":
            continue
        o = next(x for x in runs if x["library"] == "ours" and x["k"] == r["k"] and x["knobs"] == r["knobs"])
        knobs = "defaults" if r["knobs"] == "defaults" else "(" + ", ".join(map(str, r["knobs"])) + ")"
        out.append(f"| {r['k']} | {knobs} | {r['latency_ms']['p50']} / {r['latency_ms']['p95']} | "
                   f"{r['agreement@10']:.3f} | {r['ndcg@10']:.4f} | {r['float_overlap@10']:.3f} | "
                   f"{o['latency_ms']['p50']} / {o['latency_ms']['p95']} | {o['agreement@10']:.3f} | "
                   f"{o['ndcg@10']:.4f} | {o['float_overlap@10']:.3f} | "
                   f"{o['latency_ms']['p50'] / r['latency_ms']['p50']:.2f} |")
    probed = [x for x in runs if x["library"] == "ours_probed"]
    if probed:
        out += ["", "Ours with probed scoring (our default stage 2: no threshold), in the same interleaved loop as "
                "colbert-ai's row with comparable work:", "",
                "| k | our knobs (ncells, -, ndocs) | ours p50 / p95 ms | agreement | nDCG@10 | float overlap |",
                "|---|---|---|---|---|---|"]
        for o in probed:
            out.append(f"| {o['k']} | ({o['knobs'][0]}, -, {o['knobs'][2]}) | {o['latency_ms']['p50']} / "
                       f"{o['latency_ms']['p95']} | {o['agreement@10']:.3f} | {o['ndcg@10']:.4f} | "
                       f"{o['float_overlap@10']:.3f} |")
    out += ["", "At matched agreement (k=10; colbert-ai's p50 interpolated linearly on its curve between measured "
            "points; blank where our agreement lies outside its measured range):", "",
            "| our knobs | our agreement | ours p50 ms | colbert-ai p50 ms at that agreement | ratio |", "|---|---|---|---|---|"]
    for r in d["ratios_k10"]:
        knobs = "defaults" if r["knobs"] == "defaults" else "(" + ", ".join(
            "-" if v is None else str(v) for v in r["knobs"]) + ")"
        c = r["colbert_ai_p50_interpolated"]
        out.append(f"| {knobs} | {r['agreement@10']:.3f} | {r['ours_p50']} | {'' if c is None else c} | "
                   f"{'' if r['ratio'] is None else r['ratio']} |")
    b = d.get("builds", {})
    out += ["", f"Exhaustive nDCG@10 over the compressed index: colbert-ai {e['colbert_ai']['ndcg@10']:.4f}, ours "
            f"{e['ours']['ndcg@10']:.4f} (float, uncompressed: {e['float']['ndcg@10']:.4f}); exhaustive top-10 overlap "
            f"with the float reference: colbert-ai {e['colbert_ai']['float_overlap@10']:.3f}, ours "
            f"{e['ours']['float_overlap@10']:.3f}. Query encoding p50: colbert-ai {enc['colbert_ai']['p50']} ms, ours "
            f"{enc['ours']['p50']} ms."]
    if b:
        out.append("Build (own process, encoding included): " + "; ".join(
            f"{lib.replace('_', '-')} {v['build_s']} s, peak RSS {v['peak_rss_mb']} MB" for lib, v in b.items()) + ".")
    out += ["", "![latency vs agreement, both libraries](benchmarks/results/peers.png)", "",
            f"Machine: {os.cpu_count()} cores as seen by the run ({m.get('cpu_count')}), torch {m['torch']}, colbert-ai "
            f"{m.get('colbert_ai')}, transformers {m.get('transformers')}, {m['date']}.", ""]
    return out


def contention_tables() -> list[str]:
    d = _result("contention.json")
    if d is None:
        return []
    per_core = d.get("busy_processes_per_core", {})
    out = ["## Contention (`make bench-contention`)", "",
           f"{d['dataset']}, {d['queries']} queries, k=10, default model and knobs"
           + (f" (index `{d['index']['folder']}`: {d['index']['entries']} entries, {d['index']['embeddings']} "
              f"embeddings, pool_factor {d['index']['pool_factor']})" if "index" in d else "")
           + ". Retrieval excludes encoding; "
           "end-to-end is `Index.search` (encode + retrieve + fetch texts). *busy*: "
           f"{per_core.get('busy', 1)} CPU-bound process per core alongside; *oversubscribed*: "
           f"{per_core.get('oversubscribed', 4)} per core; *concurrent*: 4 threads searching through one shared "
           "`Index`. Threads: *default* (`threads=None`: the caller's count while one search runs on free cores, 1 "
           "while other searches of the process run, fewer when other processes' threads are runnable), always 1, "
           "always torch's count.", "",
           "| situation | threads | retrieval p50 / p95 / p99 ms | end-to-end p50 / p95 / p99 ms |", "|---|---|---|---|"]
    names = {"default": "default", "1_thread": "1", "torch_threads": "torch's count",
             "stages_auto": "auto (old)", "stages_1_thread": "1 (old)"}
    for situation, rows in d["results"].items():
        for label, r in rows.items():
            out.append(f"| {situation} | {names.get(label, label)} | "
                       f"{r['retrieval_ms']['p50']} / {r['retrieval_ms']['p95']} / {r['retrieval_ms'].get('p99', '')} | "
                       f"{r['end_to_end_ms']['p50']} / {r['end_to_end_ms']['p95']} / "
                       f"{r['end_to_end_ms'].get('p99', '')} |")
    t = d.get("target")
    if t:
        out += ["", f"Target (issue #37: loaded retrieval p95 and p99, default threads, within 3x of the quiet p95 "
                    f"{t['quiet_p95_ms']} ms): p95 {t['loaded_p95_x']}x, p99 {t['loaded_p99_x']}x: "
                    f"{'met' if t['met'] else 'not met'}."]
    out += ["", _machine_line(d["machine"]), ""]
    return out


def fastplaid_tables() -> list[str]:
    """benchmarks/results/fastplaid.json (``make bench-peers``): our search against fast-plaid on the same
    embeddings."""
    d = _result("fastplaid.json")
    if d is None:
        return []
    e, b, z = d["exhaustive"], d["builds"], d["sizes"]
    out = ["## Against fast-plaid (`make bench-peers`)", "",
           f"scifact ({d['documents']} documents, {d['tokens']:,} tokens, {d['queries']} queries). Both libraries "
           f"index the same float embeddings (our default model, float32 encoder) at {d['nbits']} bits: ours "
           "through `Index.build_from_embeddings`, fast-plaid 1.7 through `FastPlaid.create` in its own virtualenv "
           "(torch 2.11). Queries: the same float32 query embeddings. One query per call, interleaved, order "
           "alternated; each side times its own call (fast-plaid in its process). Knob sweep: ours (ncells, "
           "threshold, ndocs); fast-plaid (n_ivf_probe, n_full_scores) = (ncells, ndocs / 4), so both score the same "
           "number of documents exactly. *probed*: our default stage 2 (probed scoring) at comparable work. "
           "Agreement: share of the library's own exhaustive top-10; float overlap: share of the top-10 by exact "
           "MaxSim over the uncompressed embeddings (one reference for both).", "",
           "| k | library | knobs | p50 / p95 ms | agreement | float overlap | nDCG@10 |", "|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        knobs = r["knobs"] if r["knobs"] == "defaults" else "(" + ", ".join(
            "-" if v is None else str(v) for v in r["knobs"]) + ")"
        p95 = r["latency_ms"]["p95"]
        out.append(f"| {r['k']} | {r['library'].replace('_', ' ')} | {knobs} | {r['latency_ms']['p50']}"
                   f"{'' if p95 is None else f' / {p95}'} | {r['agreement@10']:.3f} | "
                   f"{r['float_overlap@10']:.3f} | {r['ndcg@10']:.4f} |")
    out += ["", "At matched agreement (fast-plaid's one-query p50 interpolated on its curve; blank where our "
            "agreement lies outside its measured range):", "",
            "| k | ours | knobs | agreement | ours p50 ms | fast-plaid p50 ms there | ratio |", "|---|---|---|---|---|---|---|"]
    for r in d["ratios"]:
        knobs = r["knobs"] if r["knobs"] == "defaults" else "(" + ", ".join(
            "-" if v is None else str(v) for v in r["knobs"]) + ")"
        other = r["fast_plaid_p50_interpolated"]
        out.append(f"| {r['k']} | {r['library'].replace('_', ' ')} | {knobs} | {r['agreement@10']:.3f} | "
                   f"{r['ours_p50']} | {'' if other is None else other} | {'' if r['ratio'] is None else r['ratio']} |")
    same = []
    for r in d["runs"]:
        if r["library"] != "ours" or r["knobs"] == "defaults":
            continue
        f = next((x for x in d["runs"] if x["library"] == "fast_plaid" and x["k"] == r["k"]
                  and x["knobs"] == [r["knobs"][0], r["knobs"][2] // 4]), None)
        if f:
            same.append(f"| {r['k']} | ({', '.join(map(str, r['knobs']))}) vs ({f['knobs'][0]}, {f['knobs'][1]}) | "
                        f"{r['latency_ms']['p50']} / {f['latency_ms']['p50']} | "
                        f"{r['latency_ms']['p50'] / f['latency_ms']['p50']:.2f} |")
    if same:
        out += ["", "At the same work (each sweep point against fast-plaid's point that scores the same number of "
                "documents exactly):", "", "| k | knobs, ours vs fast-plaid | p50 ms ours / fast-plaid | ratio |",
                "|---|---|---|---|", *same]
    out += ["", f"Exhaustive search over each compressed index: nDCG@10 ours {e['ours']['ndcg@10']:.4f}, fast-plaid "
            f"{e['fast_plaid']['ndcg@10']:.4f} (uncompressed float: {e['float']['ndcg@10']:.4f}); top-10 overlap with "
            f"exact float MaxSim ours {e['ours']['float_overlap@10']:.3f}, fast-plaid "
            f"{e['fast_plaid']['float_overlap@10']:.3f}. Size on disk per token: compressed tokens (centroid id + "
            f"residual) ours {z.get('ours_codes_residuals')} B, fast-plaid {z.get('fast_plaid_codes_residuals')} B "
            f"(int64 ids); ours also stores a float32 inverse norm per token ({z.get('ours_inverse_norms')} B, for "
            f"scoring in the compressed domain); whole index without texts ours {z.get('ours_without_texts')} B, "
            f"fast-plaid {z['fast_plaid_bytes_per_token']} B; our folder with the texts in SQLite "
            f"{z['ours_bytes_per_token']} B ({z['ours_centroids']} centroids, fast-plaid "
            f"{z['fast_plaid_centroids']}). Our k-means sample in this run: {z.get('ours_kmeans_sample_tokens')} tokens"
            + (" (the default before 0.2.0; see the compression section for the current default's fidelity)"
               if z.get("ours_kmeans_sample_tokens") == 1 << 18 else "") + ". Build from the embeddings (own process): "
            + "; ".join(f"{lib.replace('_', '-')} {v['build_s']} s, peak RSS {v['peak_rss_mb']} MB"
                        + (f" (built {v['date']})" if v.get("date") else "") for lib, v in b.items()) + ".",
            "", "![latency vs agreement, ours and fast-plaid](benchmarks/results/fastplaid.png)", "",
            _machine_line(d["machine"]), ""]
    return out


def compression_tables() -> list[str]:
    d = _result("compression.json")
    if d is None:
        return []
    out = ["## Compression fidelity (`benchmarks/experiments/compression.py`)", "",
           f"The fast-plaid benchmark's scifact embeddings ({d['tokens']:,} tokens), 2 bits, one index per codec "
           f"variant; exhaustive search over it ({d['queries']} queries) against exact float MaxSim over the "
           f"uncompressed embeddings (float nDCG@10 {d['float']['ndcg@10']}); mean cosine of 100k tokens with their "
           "reconstruction. Every row decodes a bucket to the mean of the held-out residuals that fall in it (since "
           "0.2.0; ColBERTv2 and fast-plaid use the bucket's midpoint quantile) and assigns tokens with the "
           "coarse-to-fine probe of 32. Before 0.2.0 (2^18 sample, probe 8, midpoint levels) the same embeddings "
           "gave float overlap@10 0.878 and nDCG@10 0.7021 (the fast-plaid benchmark run of 2026-12-04 17:48 UTC, "
           "before these changes).", "",
           "| codec | centroids | build s (k-means s) | float overlap@10 | nDCG@10 | token cosine |",
           "|---|---|---|---|---|---|"]
    for name, r in d["variants"].items():
        out.append(f"| {name} | {r['num_centroids']} | {r['build_s']} ({r['kmeans_s']}) | {r['float_overlap@10']:.3f} "
                   f"| {r['ndcg@10']:.4f} | {r['mean_token_cosine']} |")
    if d.get("centroids"):
        out += ["", "The centroids alone (every token compressed in memory with the same buckets, decompressed in "
                "float32, exact MaxSim; no index or search path):", "",
                "| centroids | k-means s | float overlap@10 | token cosine |", "|---|---|---|---|"]
        for name, r in d["centroids"].items():
            out.append(f"| {name} | {'' if r['kmeans_s'] is None else r['kmeans_s']} | {r['float_overlap@10']:.3f} | "
                       f"{r['mean_token_cosine']} |")
    out += ["", _machine_line(d["machine"]), ""]
    return out


def precision_tables() -> list[str]:
    d = _result("precision.json")
    if d is None:
        return []
    out = ["## Document encoding precision (`make bench-precision`)", "",
           "Each set indexed twice with the default model, documents encoded in float32 and in bfloat16 (queries "
           "float32 both times); nDCG@10 / Recall@100 with default search, top-10 overlap between the two, token "
           f"cosine between the two encodings. Rule: {d.get('rule')} (met: {d.get('rule_met')}). Throughput "
           "(docs/s) is indicative only: the runs were not on a quiet machine.", "",
           "| set | docs | queries | float32 nDCG@10 | bf16 nDCG@10 | delta | top-10 overlap | min token cosine | "
           "docs/s float32 / bf16 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in d["sets"].items():
        out.append(f"| {name} | {r['documents']} | {r['queries']} | {r['float32']['default']['ndcg@10']} | "
                   f"{r['bfloat16']['default']['ndcg@10']} | {r['ndcg@10_delta']:+.4f} | {r['top10_overlap']} | "
                   f"{r['token_cosine']['min']} | {r['float32']['encode_docs_per_s']} / "
                   f"{r['bfloat16']['encode_docs_per_s']} |")
    out += ["", _machine_line(d["machine"]), ""]
    return out


def tokens10m_tables() -> list[str]:
    d = _result("tokens10m.json")
    if d is None:
        return []
    s = d["source"]
    out = ["## 10M token embeddings (`make bench-10m`)", "",
           f"Built through the embeddings API. Source: the {s['real_tokens']:,} real tokens of scifact (our model), "
           f"then synthetic documents, each mixing the tokens of two random real documents with Gaussian noise "
           f"(sigma {s['sigma']} per dimension) and re-normalised (`benchmarks/tokens10m.py` says why). Document "
           f"lengths p10/p50/p90: real {s['length_percentiles'].get('real')}, synthetic "
           f"{s['length_percentiles'].get('synthetic')}. Queries: 100 real scifact queries; k=10, default knobs; "
           "agreement with the exhaustive top-10 over the same index. Each build and search in its own process; "
           "RSS split into anonymous and file-backed (memory maps, page cache charged to the process).", "",
           "| tokens | docs | build s | build peak RSS MB (anon / file) | disk MB | p50 / p95 ms | agreement@10 | "
           "exhaustive p50 ms | search RSS MB (anon / file) | cos to centroid real / synthetic |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["sizes"]:
        bld, srch = r.get("build", {}), r["search"]
        pk = bld.get("peak_rss", {})
        c = srch["cos_to_centroid"]
        out.append(f"| {bld.get('tokens', r['size']):,} | {bld.get('docs', '')} | {bld.get('build_s', '')} | "
                   f"{pk.get('total_mb', '')} ({pk.get('anon_mb', '')} / {pk.get('file_mb', '')}) | "
                   f"{round(bld['disk_bytes'] / 2**20) if 'disk_bytes' in bld else ''} | "
                   f"{srch['latency_ms']['p50']} / {srch['latency_ms']['p95']} | {srch['agreement@10']:.3f} | "
                   f"{srch['exhaustive_ms']['p50']} | {srch['rss_after_search_mb']['anon']} / "
                   f"{srch['rss_after_search_mb']['file']} | {c['real']} / {c['synthetic']} |")
    if "latency_exponent" in d:
        out += ["", f"Latency grows as tokens^{d['latency_exponent']} (least squares on log p50 vs log tokens)."]
    rep = d.get("repeats")
    if rep:
        out += ["", f"Repeats: the 10M search step alone, twice more on the same index: p50 "
                f"{' and '.join(str(v) for v in rep['10000000_p50_ms'])} ms (the VM drifts between runs). "
                "Interleaved in one process with an index built with the coarse assignment probe before 0.2.0: "
                + ", ".join(f"{k} {v} ms" for k, v in rep["10000000_interleaved_p50_ms"].items())
                + f"; that build took {rep['10000000_build_s_probe8']} s."]
    out += ["", _machine_line(d["machine"]), ""]
    return out


def tokens100m_tables() -> list[str]:
    """benchmarks/results/tokens100m.json (``make bench-100m``): 1M -> 100M token embeddings, updates at scale."""
    d = _result("tokens100m.json")
    if d is None:
        return []
    out = ["## 1M -> 100M token embeddings on one box (`make bench-100m`)", "",
           "Built through the embeddings API from a source generated on the fly (real scifact token embeddings of our "
           "model, then synthetic documents mixing two real ones with Gaussian noise, sigma 0.02, re-normalised; "
           "`benchmarks/tokens100m.py` says how; nothing written to disk). Queries: 100 real scifact queries, k=10, "
           "default knobs, retrieval only (query embeddings given). Agreement: share of the exhaustive top-10 that "
           "the default search returns (all 100 queries below 10M tokens, the first 25 from 10M on). Each build and "
           "search in its own process; RSS split into anonymous and file-backed (memory maps; the build's file-"
           "backed part includes ~280 MB of the source's real embeddings, memory-mapped). Build stages: encode = "
           "reading the source (of which generating it: gen), k-means, compress (centroid assignment + residuals), "
           "write (raw segment files, document store), segment (the .npy files and the inverted file).", "",
           "| tokens | docs | centroids | build s (encode / gen / k-means / compress / write / segment) | build peak "
           "RSS MB (anon / file) | disk B/token | open s | RSS after open MB (anon / file) | p50 / p95 ms | "
           "agreement@10 | exhaustive p50 ms | search peak RSS MB (anon / file) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["sizes"]:
        b, s = r.get("build", {}), r.get("search", {})
        st, pk, spk = b.get("stages", {}), b.get("peak_rss", {}), s.get("peak_rss", {})
        stages = " / ".join(str(round(st.get(k, 0))) for k in ("encode_s", "generate_s", "kmeans_s", "compress_s",
                                                                 "write_s", "segment_s"))
        ro = s.get("rss_after_open_mb", {})
        out.append(f"| {b.get('tokens', r['size']):,} | {b.get('docs', '')} | {b.get('num_centroids', '')} | "
                   f"{b.get('build_s', '')} ({stages}) | {pk.get('total_mb', '')} ({pk.get('anon_mb', '')} / "
                   f"{pk.get('file_mb', '')}) | {b.get('bytes_per_token', '')} | {s.get('open_s', '')} | "
                   f"{ro.get('anon', '')} / {ro.get('file', '')} | {s['latency_ms']['p50']} / "
                   f"{s['latency_ms']['p95']} | {s['agreement@10']:.3f} ({s.get('agreement_queries')} q) | "
                   f"{s['exhaustive_ms']['p50']} | {spk.get('total_mb', '')} ({spk.get('anon_mb', '')} / "
                   f"{spk.get('file_mb', '')}) |")
    if d.get("latency_exponent") is not None:
        out += ["", f"Latency grows as tokens^{d['latency_exponent']} (least squares on log p50 vs log tokens, "
                    f"{d['sizes'][0]['size']:,} to {d['sizes'][-1]['size']:,} tokens)."]
    for r in d["sizes"]:
        u = r.get("updates")
        if not u:
            continue
        rd = u.get("reader", {})
        out += ["", f"**Updates at {u['before']['tokens']:,} tokens** ({u['before']['docs']:,} documents; agreement "
                    f"before: {u['before']['agreement@10']}). A reader process searched throughout: "
                    f"{rd.get('searches')} searches, {rd.get('errors')} failed, {rd.get('short_results')} with fewer "
                    f"than 10 hits, {rd.get('searches_returning_deleted')} returning a document deleted in a "
                    f"generation they could see; its p50 / p95 during the updates "
                    f"{(rd.get('latency_ms_during_updates') or {}).get('p50')} / "
                    f"{(rd.get('latency_ms_during_updates') or {}).get('p95')} ms.", "",
                "| step | s (of which generating the source) | peak RSS MB (anon / file) | tokens after | segments | "
                "agreement@10 after |", "|---|---|---|---|---|---|"]
        names = {"add_1pct": "add 1 % more documents", "upsert_1000": "upsert 1,000", "delete_1pct": "delete 1 %",
                 "compact": "compact()"}
        for key, name in names.items():
            x = u.get(key)
            if x:
                pk = x["peak_rss"]
                out.append(f"| {name} | {x['s']} ({x['generate_s']}) | {pk['total_mb']} ({pk['anon_mb']} / "
                           f"{pk['file_mb']}) | {x['tokens']:,} | {x['segments']} | {x['agreement@10']} |")
    out += ["", _machine_line(d["machine"]), ""]
    return out


def pooling_tables() -> list[str]:
    """benchmarks/results/pooling.json (``make bench-pooling``)."""
    d = _result("pooling.json")
    if d is None:
        return []
    out = ["## Token pooling (`make bench-pooling`)", "",
           "`pool_factor=f`: each document's (passage's) token embeddings merged into ceil(n / f) by Ward's "
           "hierarchical clustering, mean, re-normalised, before compression (`indexing/pooling.py`). Each corpus "
           f"encoded once (default model, documents in {d['machine'].get('documents_dtype')}, long texts as "
           "passages) and every factor built from those embeddings through the embeddings API; a query's ranking "
           "keeps each document's best passage. nDCG@10 / Recall@100 with default search; build = the embeddings "
           "build (pooling, k-means, compression, writing; the encoding, the same for every factor, is listed once); "
           "p50 / p95: k=10 retrieval, query embeddings given. "
           f"Rule: {d['rule']} (met on the sets measured: {d.get('rule_met')}; measured: "
           f"{', '.join(d['sets']) or 'none'}). "
           + ("So a new index pools by 2 unless `pool_factor` says otherwise" if d.get("rule_met") else
              "So pooling stays off unless `pool_factor` asks for it")
           + " (`indexing.pooling.DEFAULT_POOL_FACTOR`; `pool_factor=1`: none; an existing index keeps the factor it "
           "records); see README \"Token pooling\".", "",
           "| set | factor | tokens stored | index MB | nDCG@10 | delta | Recall@100 | build s | p50 / p95 ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, r in d["sets"].items():
        for f, x in r["factors"].items():
            out.append(f"| {name} | {f} | {x['tokens']:,} | {x['index_bytes'] / 2**20:.1f} | {x['ndcg@10']} | "
                       f"{x.get('ndcg@10_delta', 0):+.4f} | {x['recall@100']} | {x['build_s']} | "
                       f"{x['latency_ms']['p50']} / {x['latency_ms']['p95']} |")
    enc = ", ".join(f"{n} {r['encode_s']} s ({r['passages']} passages)" for n, r in d["sets"].items())
    runs = d.get("machine_runs")
    when = ("; sets measured in separate runs: " + ", ".join(f"{n} {t}" for n, t in runs.items())) if runs else ""
    out += ["", f"Encoding, once per set: {enc}. Latency and build times may come from a shared, loaded machine: "
                f"compare them within a set only{when}.", "", _machine_line(d["machine"]), ""]
    return out


def encode_tables() -> list[str]:
    """benchmarks/results/encode.json (``make bench-encode``)."""
    d = _result("encode.json")
    if d is None:
        return []
    out = ["## Document encoding throughput, float32 (`make bench-encode`)", "", d.get("how", ""), "",
           "| CPU kind | path | tokens/s | GFLOP/s | of the FMA peak (GFLOP/s) | of this process's sgemm (GFLOP/s) | "
           "speed vs eager (same process) |", "|---|---|---|---|---|---|---|"]
    for kind, r in d["kinds"].items():
        for path, x in r["paths"].items():
            peak = "–" if x.get("of_peak") is None else f"{x['of_peak']:.0%} of {r['peak_gflops']}"
            out.append(f"| {kind} ({r['capability']}) | {path} | {x['tokens_per_s']:,} | {x['gflops']} | {peak} | "
                       f"{x['of_sgemm']:.0%} ({r['sgemm_gflops']}) | {x.get('ratio_to_eager', 1.0)} |")
    q = d.get("quality")
    if q:
        out += ["", "Quality (documents encoded with the fused path vs eager, float32, queries the same; nDCG@10 with "
                    "default search; each index trains its own codec, and *same codec*: the fused embeddings "
                    "compressed with the eager index's codec, so the difference is the encoder's alone): "
                    + "; ".join(f"{n} {v['eager']} -> {v['fused']} ({v['delta']:+.4f})"
                                + (f", same codec {v['fused_same_codec']} ({v['delta_same_codec']:+.4f})"
                                   if "fused_same_codec" in v else "")
                                for n, v in q.items()) + "."]
    if d.get("measured_at"):
        out += ["", f"Throughput measured {d['measured_at']}; quality in the run of the machine line below."]
    out += ["", _machine_line(d["machine"]), ""]
    return out


def ab_release_tables() -> list[str]:
    d = _result("ab_release.json")
    if d is None:
        return []
    r, e = d["retrieval_ms"], d["end_to_end_ms"]
    return ["## This release against the previous one, same process (`benchmarks/experiments/ab_release.py`)", "",
            f"The previous release's package (git {d['rev']}) imported under another name beside this one; both open "
            f"the same index (`{Path(d['index']).name}`), {d['queries']} scifact queries interleaved (order "
            "alternated), k=10, default knobs; retrieval with the same query embeddings, end-to-end with each "
            "release's own encoder.", "",
            "| | previous p50 / p95 ms | this release p50 / p95 ms | p50 ratio |", "|---|---|---|---|",
            f"| retrieval | {r['previous']['p50']} / {r['previous']['p95']} | {r['this release']['p50']} / "
            f"{r['this release']['p95']} | {d['retrieval_p50_ratio']} |",
            f"| end-to-end | {e['previous']['p50']} / {e['previous']['p95']} | {e['this release']['p50']} / "
            f"{e['this release']['p95']} | {d['end_to_end_p50_ratio']} |", "",
            f"Top-10 agreement between the two: {d['top10_agreement']}; identical top-10 in the same order on "
            f"{d['same_top10_order']:.0%} of queries.", "", _machine_line(d["machine"]), ""]


def gpu_tables() -> list[str]:
    g = _result("gpu.json")
    if g is None:
        return ["## GPU kernels", "", "Not run yet: no GPU was available to the session that wrote this file. "
                "`bash benchmarks/gpu_check.sh` on a CUDA machine runs the gpu tests and `benchmarks/gpu.py`, which "
                "writes benchmarks/results/gpu.json and this section.", ""]
    ops = sorted({k[: -len("_torch")] for k in g if k.endswith("_torch")})
    out = ["## GPU kernels (`benchmarks/gpu.py`)", "",
           f"{g['gpu']}; {g['tokens']:,} random token embeddings in {g['docs']:,} documents, 2 bits; ms per call, "
           "Triton kernels vs the torch path on the same GPU.", "", "| operation | torch ms | Triton ms | ratio |",
           "|---|---|---|---|"]
    for op in ops:
        t, k = g[f"{op}_torch"], g.get(f"{op}_triton")
        out.append(f"| {op.replace('_ms', '').replace('_', ' ')} | {t} | {k} | "
                   f"{'' if not k else round(k / t, 2)} |")
    out += ["", "The fused exact-MaxSim kernel multiplies in `tf32x3` at 16-token blocks: with true fp32 dots at 32 it "
            "was 2.4x slower than the torch path (`benchmarks/experiments/triton_exact.py`, "
            "results/triton_exact.jsonl).", "", _machine_line(g["machine"]), ""]
    return out


def coldstart_tables() -> list[str]:
    d = _result("coldstart.json")
    if d is None:
        return []
    out = ["## Cold start (`make bench-coldstart`)", "",
           f"A new process: import, `Index.open` (loads the model, imports numba and starts the kernels' compilation "
           f"or cache load in a background thread), then five text searches of different lengths (the kernels each "
           f"ran: torch twins until the numba kernels are ready), then the same five once the background thread is "
           f"done; index `{d['index']}`; numba's cache folder empty (a new machine), or filled by the previous "
           "process (warm). Medians of fresh processes.", "",
           "| case | import s | open s | first five searches, ms (kernels) | warm-up done s | later five, ms | "
           "compilations after |", "|---|---|---|---|---|---|---|"]
    for name, r in d["cases"].items():
        if "first_five_ms" not in r:  # a result written by the previous version of the benchmark
            continue
        kinds = sorted(set(r["first_five_kernels"]), key=r["first_five_kernels"].index)
        out.append(f"| {name} | {r['import_s']} | {r['open_s']} | {' / '.join(map(str, r['first_five_ms']))} "
                   f"({', '.join(kinds)}) | {r['warm_up_done_s']} | {' / '.join(map(str, r['later_five_ms']))} | "
                   f"{int(r['compilations_after_warm_up'])} |")
    out += ["", f"Query tokens: {' / '.join(str(int(t)) for t in next(iter(d['cases'].values()))['query_tokens'])}.",
            "", _machine_line(d["machine"]), ""]
    return out


def query_path_tables() -> list[str]:
    d = _result("query_path.json")
    if d is None:
        return []
    out = ["## Query path (`make bench-query-path`)", "",
           "One query at a time, k=10, default knobs; the two float16 switches off (float32 query weights, float32 "
           "query-centroid product) vs on (the default on CPU with fbgemm), interleaved query by query in one "
           "process. Encoding: `encode_queries`; centroid product: `ResidualCodec.centroid_scores` on the query's "
           "real rows; retrieval: `search_embeddings` (excludes encoding, includes fetching the hits); end-to-end: "
           "`Index.search`. p50 ms.", "",
           "| index | part | float32 | float16 (default) | ratio |", "|---|---|---:|---:|---:|"]
    parts = [("encoding", "query encoding"), ("centroid_product", "centroid product"), ("retrieval", "retrieval"),
             ("end_to_end", "end-to-end")]
    notes = []
    for name, r in d["indexes"].items():
        for key, label in parts:
            out.append(f"| {name} ({r['queries']} q) | {label} | {r[f'{key}_float32']['p50']} | "
                       f"{r[f'{key}_float16']['p50']} | {r[f'{key}_ratio_p50']} |")
        a = r["agreement_top10"]
        line = (f"{name}: top-10 agreement with the exhaustive top-10 of the float32 query embeddings "
                f"{a['float32']} (float32) / {a['float16']} (float16: near-ties may flip); "
                f"query embeddings min cosine {r['query_embeddings_min_cosine']}, max abs difference "
                f"{r['query_embeddings_max_abs_diff']:.1e}")
        q32, q16 = r.get("quality_float32_query_weights"), r.get("quality_float16_query_weights")
        if q32 and q16:
            line += (f"; nDCG@10 {q32['ndcg@10']} / {q16['ndcg@10']}, Recall@100 {q32['recall@100']} / "
                     f"{q16['recall@100']}")
        notes.append(line + ".")
    out += ["", *notes, "", _machine_line(d["machine"]), ""]
    return out


def _machine(m: dict) -> str:
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}, {m.get('date', '?')}"


def beyond_one_machine() -> list[str]:
    """The sharded index on local Ray and the HTTP server (distributed.json, serve.json)."""
    dist, srv = RESULTS / "distributed.json", RESULTS / "serve.json"
    if not dist.exists() and not srv.exists():
        return []
    lines = ["## Beyond one machine (`make bench-distributed`, `make bench-serve`)", ""]
    if dist.exists():
        d = json.loads(dist.read_text())
        s = d["search_k10"]
        row = lambda name, x: f"| {name} | {x['p50']} | {x['p95']} | {x['p99']} |"  # noqa: E731
        a, e = d["answers_default_plaid"], d["answers_exhaustive"]
        lines += [f"{d['passages']} WordNet glosses streamed from a JSONL file into {d['shards']} shards on local Ray "
                  f"(2 CPUs), default model. Build: 1 encoder worker {d['build_s_1_workers']} s, 2 workers "
                  f"{d['build_s_2_workers']} s (each worker 2 // workers threads; the driver first encodes the codec's "
                  f"sample of {d.get('sample_documents')} documents and trains it); one index in process, with the "
                  f"sharded index's codec, "
                  f"{d['build_s_single_index_in_process_same_codec']} s.", "",
                  f"Search, k=10, {s['searches']} searches of the same query embeddings, sharded and single "
                  f"alternating (ms):", "", "| | p50 | p95 | p99 |", "|---|---:|---:|---:|",
                  row("one index (in process)", s["single_index_ms"]), row("2 shards: the driver's time", s["sharded_ms"]),
                  row("2 shards: the slowest shard's own time", s["slowest_shard_ms"]),
                  row("fan-out overhead (driver's time less the slowest shard's)", s["fan_out_overhead_ms"]), "",
                  f"The same answers as one index with the same codec and documents: default PLAID "
                  f"{a['same_top10_set']}/{a['queries']} queries with the same top-10 set ({a['same_top10_order']} in "
                  f"the same order), exhaustive {e['same_top10_set']}/{e['queries']} ({e['same_top10_order']}); largest "
                  f"score difference {e['max_score_difference']:.2g} (documents encoded in {d.get('dtype')} on both "
                  f"sides; PLAID's candidates are each shard's own, hence the default-knob differences). Goal (issue "
                  f"#40): fan-out overhead at most 2 ms over the slowest shard; here p50 "
                  f"{s['fan_out_overhead_ms']['p50']} ms. Machine: {_machine(d['machine'])}. {d.get('note', '')}", ""]
        bf = RESULTS / "distributed_bfloat16.json"
        if bf.exists():
            b = json.loads(bf.read_text())
            x = b["answers_exhaustive"]
            lines += [f"With the bf16-CPU default instead ({b['dtype']}), one index built in process and the shards' "
                      f"encoders batch the documents differently, and bfloat16 encodings change with the batch's "
                      f"shape: exhaustive top-10 sets agreed on {x['same_top10_set']}/{x['queries']} queries, largest "
                      f"score difference {x['max_score_difference']:.2g} (the encodings differ, not the merge). Build "
                      f"{b['build_s_1_workers']} s with 1 worker, {b['build_s_2_workers']} s with 2; fan-out overhead "
                      f"p50 {b['search_k10']['fan_out_overhead_ms']['p50']} ms.", ""]
    if srv.exists():
        v = json.loads(srv.read_text())
        lines += [f"HTTP server on 127.0.0.1 (one replica, Ray Serve), {v['passages']} WordNet glosses, k={v['k']}: "
                  f"batched (up to {v['max_batch_size']['batched']} searches per forward pass, {v['batch_wait_ms']} ms "
                  f"wait) against unbatched, side by side behind one proxy, alternating; each run bounded to "
                  f"{v['bound']['requests']} searches or {v['bound']['seconds']} s; medians of the rounds. Searches per "
                  f"forward pass over all the batched runs (1 to 64 clients): {v['batched_queries_per_forward_pass']}. "
                  f"Goal (issue #40): at 16 clients, at least 2x the unbatched QPS with p99 at most 100 ms; here "
                  f"{v['summary']['16']['qps_ratio_batched_over_unbatched']}x, p99 "
                  f"{v['summary']['16']['batched']['p99_ms']} ms.", "",
                  "| clients | batched QPS | p50 ms | p99 ms | unbatched QPS | p50 ms | p99 ms | QPS ratio |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for clients, r in v["summary"].items():
            b, u = r["batched"], r["unbatched"]
            lines.append(f"| {clients} | {b['qps']} | {b['p50_ms']} | {b['p99_ms']} | {u['qps']} | {u['p50_ms']} | "
                         f"{u['p99_ms']} | {r['qps_ratio_batched_over_unbatched']} |")
        lines += ["", f"Machine: {_machine(v['machine'])}.{_pooled(v['machine'])} {v.get('note', '')}", ""]
    return lines


def render() -> Path:
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (benchmarks/run.py) and `make bench-scale` (benchmarks/scale.py); raw numbers in "
             "benchmarks/results/*.json. Re-running overwrites this file. The sections come from several runs: each "
             "names its machine and date (and the earlier runs it reuses rows from); compare numbers across sections "
             "only with that in mind. Latencies are per single query unless noted. Token pooling: a result file "
             "whose machine records `pool_factor_default` was measured with indexes built without `pool_factor` "
             "pooled by that factor (its machine line says so); the ones before it (pooling was off by default "
             "until 2026-12-07) with unpooled indexes; a result's own `pool_factor` (the peer comparisons, the "
             "compression study, the 10M/100M token sizes, the sharded build's single index: 1, like with like) or "
             "its section (\"Token pooling\") overrides both.", ""]
    bench = RESULTS / "bench.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        m = b["machine"]
        lines += [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                  f"transformers {m['transformers']}, colbert-retriever {m['colbert_retriever']}, encoder dtype "
                  f"{m.get('encoder_dtype')}, {m['date']}." + _pooled(m)
                  + (f" Rows this run did not recompute (baselines, nbits 1 and 4) are from the run of "
                     f"{b['merged_from_previous_run']}." if b.get("merged_from_previous_run") else "")
                  + "".join(sorted({f" The nbits 2 indexes were reused (`--reuse`): their build figures are from "
                                    f"the run of {r['colbert_nbits2']['build_reused_from']}."
                                    for r in b["datasets"].values()
                                    if r.get("colbert_nbits2", {}).get("build_reused_from")})), "",
                  "## Quality (default model)", "",
                  "nDCG@10 with linear gains, MRR@10, Recall@100; "
                  + ("rows of this run keep a retrieved id equal to the query id (runs before 0.2.0 dropped it)"
                     if b.get("merged_from_previous_run") else "a retrieved id equal to the query id is kept (BEIR's "
                     "rule for ArguAna and Quora, off by default here)")
                  + "; the hybrid section below shows both ways. "
                  "BM25: bm25s (k1=0.9, b=0.4, lowercase, bm25s English stopwords). Single-vector: mean-pooled "
                  "all-MiniLM-L6-v2, faiss IndexFlatIP. ColBERT: the default model (same backbone + 128-d head).",
                  *quality_table(b), "", "## Speed, size, memory", "",
                  "Queries are encoded by the model `Index.open(path)` loads when given none (`load_model(\"default\")`:"
                  " the inference backbone with packed float16 query weights; runs before 2026-12-05 08:42 used "
                  "`ColBERT.default()`, whose transformers modules encode ~2x slower). One query per call; latencies "
                  "are single passes, except the index details' last column (each query's fastest of 3).", "",
                  *speed_table(b), "", "## Index details", "", *detail_table(b), ""]
    scale = RESULTS / "scale.json"
    if scale.exists():
        s = json.loads(scale.read_text())
        lines += ["## Scale (WordNet glosses, unjudged)", "",
                  "Agreement@10 = share of exhaustive top-10 ids that PLAID returns (default knobs). Latency excludes "
                  "query encoding; one query per call. \"k=10 first pass\" is the first pass over the queries after "
                  "the index was built or opened (first-touch page faults of the memory-mapped arrays, the kernels' "
                  "first calls); the other latency columns are the passes after it. "
                  f"Machine: {s['machine']['cpu']}, {s['machine']['cores']} cores, colbert-retriever "
                  f"{s['machine']['colbert_retriever']}, {s['machine']['date']}.{_pooled(s['machine'])}", "",
                  *scale_tables(s), "",
                  "![latency vs collection size](benchmarks/results/latency_vs_size.png)",
                  "![latency vs agreement](benchmarks/results/latency_vs_agreement.png)", ""]
    lines += query_path_tables()
    lines += fastplaid_tables()
    lines += compression_tables()
    lines += peers_tables()
    lines += tokens10m_tables()
    lines += tokens100m_tables()
    lines += pooling_tables()
    lines += encode_tables()
    lines += coldstart_tables()
    lines += ab_release_tables()
    lines += precision_tables()
    lines += contention_tables()
    lines += updates_tables()
    lines += hybrid_tables()
    single = RESULTS / "single-adds.json"
    if single.exists():
        a = json.loads(single.read_text())
        lines += ["## One document per add (LangChain vector store; `make bench-single-adds`)", "",
                  f"An empty `ColBERTVectorStore`, then {a['n']} `add_documents` calls of one stdlib docstring each "
                  f"(default model): {a['total_s']} s in all, per add p50 {a['per_add_ms']['p50']} ms / p95 "
                  f"{a['per_add_ms']['p95']} ms; the centroids were re-trained {a['recluster_count']} times (by "
                  f"re-encoding the stored texts, at adds {', '.join(map(str, a['recluster_at']))}); "
                  f"{a['final_segments']} segments at the end. The same documents in one `from_documents` call: "
                  f"{a['bulk_build_s']} s. Top-10 overlap on 50 queries: grown vs one-shot store "
                  f"{a['top10_overlap_with_bulk']}; with exact float MaxSim: grown "
                  f"{a.get('top10_overlap_with_float_exact', {}).get('grown')}, one-shot "
                  f"{a.get('top10_overlap_with_float_exact', {}).get('bulk')}; PLAID vs exhaustive on the grown store "
                  f"{a['top10_agreement_plaid_vs_exhaustive']}.", ""]
    lines += beyond_one_machine()
    lines += gpu_tables()
    plan = ROOT / "benchmarks" / "PLAN_100M.md"
    if plan.exists():
        lines += [plan.read_text()]
    lines += ["## Lab notes", "",
              "Dated experiments that informed the defaults (what was tried, measured, kept or dropped) are in "
              "[benchmarks/NOTES.md](benchmarks/NOTES.md), one section per session; one-off experiment scripts are "
              "in `benchmarks/experiments/` (see its README)."]
    path = ROOT / "BENCHMARKS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(render())
