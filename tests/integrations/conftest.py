import pytest

DOCS = [
    ("Paris is the capital and largest city of France.", {"source": "geo.md", "year": 2020}),
    ("Berlin is the capital of Germany and its largest city.", {"source": "geo.md", "year": 2021}),
    ("The violin is a string instrument played with a bow.", {"source": "music.txt", "year": 2019}),
    ("A piano has 88 keys and is played by pressing them.", {"source": "music.txt", "year": 2022}),
    ("Python's json.loads parses a JSON string into Python objects.", {"source": "code.md", "year": 2023}),
    ("ColBERT scores documents with late interaction: MaxSim over token embeddings.",
     {"source": "ir.md", "year": 2020}),
]


@pytest.fixture(scope="session")
def lc_index_path(tmp_path_factory, default_model):
    """A small index of DOCS built with the default model (shared by the LangChain standard tests)."""
    from colbert_retriever import Index

    path = tmp_path_factory.mktemp("lc") / "index"
    Index.build(path, [t for t, _ in DOCS], ids=[f"doc{i}" for i in range(len(DOCS))],
                metadatas=[m for _, m in DOCS], model=default_model, show_progress=False)
    return path
