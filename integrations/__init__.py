"""Framework adapters: ``colbert_retriever.integrations.langchain`` and ``colbert_retriever.integrations.llama_index``.
Nothing is imported here; each submodule imports its framework."""
