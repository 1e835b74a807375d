"""``make bench-encode``: document encoding throughput in float32 (the path CPUs without native bf16 take), per CPU
kind, as tokens/s and as a fraction of the fp32 FMA peak, for the plain PyTorch layers ("eager") and the default
path (oneDNN-packed linears with bias, GELU and residual fused: ``model/cpugemm.py``), interleaved in one process.

CPU kinds: this machine as it is (AVX-512 here), and the same capped to AVX2 (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``), each in its own process, documents in float32
(``COLBERT_RETRIEVER_CPU_BF16=0``: the policy of CPUs without bf16).

The peak: cores x fp32 FMA lanes per cycle x 2 FLOP x clock. The clock is /proc/cpuinfo's "cpu MHz" (a VM reports
its nominal clock; boost clocks would raise the peak), the lanes are given per CPU model (``FMA_LANES``): AMD Zen 4
(family 25, model 17: EPYC Genoa) has two 256-bit FMA pipes and runs AVX-512 as two halves, so 16 fp32 FMAs per
cycle for AVX2 and AVX-512 code alike. FLOPs per document are counted from the model's shapes for its real tokens
(padding is work the encoder wastes): per token 2 x (4 h^2 + 2 h i) for the linears of each layer plus 2 h dim for
the projection, plus 4 n h per token per layer for attention over the document's n tokens. A large sgemm (8192 x
384 by 384 x 1536, the FFN's shape) is timed in the same rounds: "of sgemm" is the encoder's FLOP rate over what
MKL's best GEMM reached in the same process at the same time, a load-independent figure on a shared machine.

Quality (``--quality``): each set indexed twice from its text with the float32 model (eager and fused), nDCG@10 by
default search; the rule is the bf16 policy's: within 0.002 on scifact, cranfield and cisi.

    python benchmarks/encode.py [--docs 256] [--rounds 6] [--quality]

Writes benchmarks/results/encode.json and re-renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402

KINDS = {"native": {},
         "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
FMA_LANES = {("25", "17"): {"native": 16, "avx2": 16}}
"""fp32 FMAs per cycle per core by (cpu family, model) and kind (see the module docstring)."""


def cpu_facts() -> dict:
    info = {}
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        k = k.strip()
        if k in ("cpu family", "model", "cpu MHz", "model name") and k not in info:
            info[k] = v.strip()
    return {"family": info.get("cpu family"), "model": info.get("model"), "mhz": float(info.get("cpu MHz", 0)),
            "name": info.get("model name"), "cores": os.cpu_count()}


def flops_per_doc(cfg, dim: int, n: int) -> float:
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return n * (layers * 2 * (4 * h * h + 2 * h * i) + 2 * h * dim) + layers * 4 * n * n * h


def measure(n_docs: int, rounds: int) -> dict:
    import torch

    from colbert_retriever import load_model
    from colbert_retriever.evaluation import load_corpus
    from colbert_retriever.model import cpugemm

    model = load_model("default", dtype="float32")
    _, texts, _ = load_corpus(SHARED / "scifact")
    docs = texts[:n_docs]
    lengths = [int(b.attention_mask.sum(1)[j]) for s in range(0, len(docs), 64)
               for b in [model.tokenizer.documents(docs[s : s + 64])[0]] for j in range(b.input_ids.shape[0])]
    tokens = sum(lengths)
    flops = sum(flops_per_doc(model.backbone.config, model.config.dim, n) for n in lengths)
    a, b = torch.randn(8192, 384), torch.randn(384, 1536)

    def eager():
        with cpugemm.onednn_documents(False):
            return model.encode_documents_packed(docs)

    def fused():
        return model.encode_documents_packed(docs)

    def sgemm():
        for _ in range(5):
            torch.mm(a, b)

    paths = {"eager": eager, "fused (default)": fused, "sgemm": sgemm}
    for f in paths.values():
        f()
    times = {k: [] for k in paths}
    for r in range(rounds):
        for k in (list(paths) if r % 2 == 0 else list(reversed(paths))):
            t = time.perf_counter()
            paths[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    sgemm_gflops = 5 * 2 * 8192 * 384 * 1536 / med["sgemm"] / 1e9
    e, f_ = eager()[0], fused()[0]
    cos = torch.nn.functional.cosine_similarity(e, f_, dim=-1)
    return {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "docs": len(docs), "tokens": tokens, "gflop": round(flops / 1e9, 2), "seconds": {k: round(v, 3) for k, v in
                                                                                         med.items()},
            "sgemm_gflops": round(sgemm_gflops, 1), "token_cosine_min": round(float(cos.min()), 7),
            "paths": {k: {"tokens_per_s": round(tokens / med[k]), "gflops": round(flops / med[k] / 1e9, 1),
                          "of_sgemm": round(flops / med[k] / 1e9 / sgemm_gflops, 3),
                          "ratio_to_eager": round(med["eager"] / med[k], 3)}
                      for k in ("eager", "fused (default)")}}


def quality(reuse: bool = False) -> dict:
    """nDCG@10 of each set indexed from its text with the plain layers ("eager") and the default fused path, each
    index training its own codec; and the fused embeddings compressed with the eager index's codec ("fused, same
    codec"): k-means on embeddings that differ in last bits can land elsewhere, which moves nDCG by itself; with
    one codec the difference is the encoder's alone. reuse: search indexes an earlier run left instead of
    building them again."""
    from colbert_retriever import Index, load_model
    from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries, metrics
    from colbert_retriever.model import cpugemm

    model = load_model("default", dtype="float32")
    out = {}
    for name in ("scifact", "cranfield", "cisi"):
        ids, texts, metas = load_corpus(SHARED / name)
        queries, qrels = load_queries(SHARED / name), load_qrels(SHARED / name)
        qids = [q for q in queries if q in qrels]
        r, built = {}, {}
        for path, on, codec_from in (("eager", False, None), ("fused", True, None),
                                     ("fused_same_codec", True, "eager")):
            folder = WORK / f"encode-{name}-{path}"
            if reuse and (folder / "metadata.json").exists():
                index = Index.open(folder, model=model)
            else:
                codec = built[codec_from].snapshot().arrays.codec if codec_from else None
                with cpugemm.onednn_documents(on):
                    index = Index.build(folder, texts, ids=ids, metadatas=metas, model=model, codec=codec,
                                        if_exists="overwrite", show_progress=False)
            built[path] = index
            run = {q: [h.id for h in index.search(queries[q], k=100)] for q in qids}
            r[path] = round(metrics(run, qrels)["ndcg@10"], 4)
        r["delta"] = round(r["fused"] - r["eager"], 4)
        r["delta_same_codec"] = round(r["fused_same_codec"] - r["eager"], 4)
        out[name] = r
        print(name, json.dumps(r), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "measure"])
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="--quality: search the indexes an earlier run built")
    ap.add_argument("--skip-measure", action="store_true",
                    help="keep the throughput of the last run (results/encode.json); with --quality")
    args = ap.parse_args(argv)
    if args.step == "measure":
        print(json.dumps(measure(args.docs, args.rounds)))
        return
    cpu = cpu_facts()
    lanes = FMA_LANES.get((cpu["family"], cpu["model"]))
    out = {"machine": machine_info(), "cpu": cpu, "kinds": {}}
    out["how"] = ("tokens/s over the first {docs} scifact documents (real tokens; batch 32), median of {rounds} "
                  "interleaved rounds; FMA peak = cores x fp32 FMA lanes x 2 x clock ({peak}); \"of sgemm\": the "
                  "encoder's FLOP rate over an 8192x384x1536 sgemm timed in the same rounds. The clock is the nominal "
                  "one /proc/cpuinfo reports: where the sgemm beats that peak the cores run faster than it, and "
                  "\"of sgemm\" is the figure to compare; on a shared machine absolute rates drop with the load, "
                  "\"of sgemm\" and the ratios much less.")
    prev_file = Path(__file__).resolve().parent / "results" / "encode.json"
    prev = json.loads(prev_file.read_text()) if prev_file.exists() else {}
    for kind, env in KINDS.items():
        if args.skip_measure and kind in prev.get("kinds", {}):
            out["kinds"][kind], out["how"] = prev["kinds"][kind], prev["how"]
            out["measured_at"] = prev.get("measured_at", prev["machine"]["date"])
            continue
        p = subprocess.run([sys.executable, __file__, "measure", "--docs", str(args.docs), "--rounds",
                            str(args.rounds)], env={**os.environ, **env, "COLBERT_RETRIEVER_CPU_BF16": "0"},
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{kind}: {p.stderr[-2000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        peak = cpu["cores"] * lanes[kind] * 2 * cpu["mhz"] / 1e3 if lanes else None
        r["peak_gflops"] = round(peak, 1) if peak else None
        for x in r["paths"].values():
            x["of_peak"] = round(x["gflops"] / peak, 3) if peak else None
        out["kinds"][kind] = r
        print(kind, json.dumps(r), flush=True)
    peaks = {k: r["peak_gflops"] for k, r in out["kinds"].items()}
    out["how"] = out["how"].format(docs=args.docs, rounds=args.rounds,
                                   peak=", ".join(f"{k} {v} GFLOP/s" for k, v in peaks.items()))
    if args.quality:
        out["quality"] = quality(args.reuse)
    elif "quality" in prev:
        out["quality"] = prev["quality"]
    write_json("encode.json", out)
    from render import render

    render()
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
