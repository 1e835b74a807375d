"""Write the notebooks in notebooks/ (outputs cleared). Run after editing the cells below."""

import nbformat as nbf

SETUP = """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path
ROOT = Path.cwd() if (Path.cwd() / "examples").exists() else Path.cwd().parent
WORK = Path(os.environ.get("NOTEBOOK_WORKDIR", "/tmp")) / "colbert_retriever_notebooks"
WORK.mkdir(parents=True, exist_ok=True)"""

QUICKSTART = [
    ("md", "# colbert-retriever quickstart\nIndex a small collection with the offline default model, search it, "
           "filter by metadata, update the index, and look at PLAID's latency-vs-agreement trade-off."),
    ("code", SETUP),
    ("code", """import json, shutil
from colbert_retriever import ColBERT, Index
rows = [json.loads(l) for l in open(ROOT / "examples" / "stdlib_docs.jsonl")][:1200]
texts = [f"{r['title']}. {r['text']}" for r in rows]
model = ColBERT.default()
shutil.rmtree(WORK / "quickstart", ignore_errors=True)
index = Index.build(WORK / "quickstart", texts, ids=[r["_id"] for r in rows],
                    metadatas=[{"module": r["module"]} for r in rows], model=model, show_progress=False)
index"""),
    ("code", """for h in index.search("how do I parse JSON", k=3):
    print(h.rank, round(h.score, 2), h.id)"""),
    ("md", "Filters use a small Chroma-like dialect: equality, `$in`, `$gt`/`$gte`/`$lt`/`$lte`, `$ne`, `$and`/`$or`."),
    ("code", """for h in index.search("open a file", k=3, filter={"module": {"$in": ["gzip", "zipfile"]}}):
    print(h.rank, round(h.score, 2), h.id, h.metadata)"""),
    ("code", """index.add(["Use json.loads(s) to turn a JSON string into Python objects."], ids=["howto.json"],
          metadatas=[{"module": "howto"}])
print([h.id for h in index.search("parse a JSON string", k=3)])
index.delete(["howto.json"])
print([h.id for h in index.search("parse a JSON string", k=3)], len(index))"""),
    ("md", "PLAID knobs are per call. Agreement = share of the exhaustive top-10 that PLAID returns."),
    ("code", """import time
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
queries = ["read a file line by line", "random integer", "current time", "sort a list", "compress data",
           "send an email", "parse command line arguments", "hash a password", "make a temporary directory",
           "join paths"]
Q = model.encode_queries(queries)
ref = [[h.id for h in index.search_embeddings(Q[i:i+1], 10, config=__import__("colbert_retriever").SearchConfig(exhaustive=True))[0]] for i in range(len(queries))]
points = []
for ndocs in (16, 32, 64, 128, 256):
    t = time.perf_counter(); agree = 0
    for i, q in enumerate(queries):
        got = [h.id for h in index.search_embeddings(Q[i:i+1], 10, config=__import__("colbert_retriever").SearchConfig(ncells=1, ndocs=ndocs))[0]]
        agree += len(set(got) & set(ref[i])) / 10
    points.append(((time.perf_counter() - t) / len(queries) * 1000, agree / len(queries)))
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
ax.set_xlabel("ms / query (excl. encoding)"); ax.set_ylabel("top-10 agreement")
points"""),
]

LANGCHAIN = [
    ("md", "# LangChain: ColBERT retriever + MaxSim reranker in an LCEL chain\nOffline: a fake chat model stands in "
           "for the LLM."),
    ("code", SETUP),
    ("code", """import shutil
from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter
from colbert_retriever import ColBERT
from colbert_retriever.integrations.langchain import ColBERTRetriever, ColBERTReranker
handbook = (ROOT / "README.md").read_text()
chunks = RecursiveCharacterTextSplitter(chunk_size=400, chunk_overlap=40).create_documents(
    [handbook], metadatas=[{"source": "README.md"}])
model = ColBERT.default()
shutil.rmtree(WORK / "lc", ignore_errors=True)
retriever = ColBERTRetriever.from_documents(chunks, index_path=WORK / "lc", model=model, k=6)
len(chunks)"""),
    ("code", """from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
reranker = ColBERTReranker(model=model, top_n=2)
def retrieve_and_rerank(question):
    return reranker.compress_documents(retriever.invoke(question), question)
prompt = ChatPromptTemplate.from_template("Context:\\n{context}\\n\\nQuestion: {question}")
llm = FakeListChatModel(responses=["(a real LLM would answer from the context here)"])
chain = ({"context": RunnableLambda(retrieve_and_rerank) | RunnableLambda(lambda d: "\\n".join(x.page_content for x in d)),
          "question": RunnablePassthrough()} | prompt | llm | StrOutputParser())
print(chain.invoke("How do I run the tests?"))
for d in retrieve_and_rerank("How do I run the tests?"):
    print(d.metadata["rank"], round(d.metadata["score"], 2), d.page_content[:80].replace("\\n", " "))"""),
]

LLAMA = [
    ("md", "# LlamaIndex: query engine over a ColBERT retriever\nOffline: `MockLLM` stands in for the LLM; "
           "llama-index-core ships its NLTK/tiktoken caches."),
    ("code", SETUP),
    ("code", """import shutil
from llama_index.core import SimpleDirectoryReader
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from colbert_retriever import ColBERT
from colbert_retriever.integrations.llama_index import ColBERTRetriever, ColBERTRerank
docs = SimpleDirectoryReader(input_files=[str(ROOT / "README.md"), str(ROOT / "CONTRIBUTING.md")]).load_data()
model = ColBERT.default()
shutil.rmtree(WORK / "li", ignore_errors=True)
retriever = ColBERTRetriever.from_documents(docs, WORK / "li", model=model, similarity_top_k=5,
                                            transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=16)])
engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=16),
                                        node_postprocessors=[ColBERTRerank(model=model, top_n=2)])
response = engine.query("How do I run the benchmarks?")
for n in response.source_nodes:
    print(round(n.score, 2), n.node.metadata["file_name"], n.node.get_content()[:80].replace("\\n", " "))"""),
]


def write(name, cells):
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, f"notebooks/{name}.ipynb")


write("quickstart", QUICKSTART)
write("langchain_rag", LANGCHAIN)
write("llama_index_rag", LLAMA)
