"""Triton kernels (GPU hot loops). A leaf package: imports triton and torch only. Imported lazily by
``colbert_retriever.kernels.dispatch``; importing ``colbert_retriever`` never imports triton."""
