"""The encoder: ``encoder.ColBERT`` (backbone + projection), its parts (``loading``, ``bert``: a plain-PyTorch
BERT for inference, ``halfgemm``: products against packed float16 weights, ``tokenization``, ``checkpoints``:
colbert-ai and PyLate layouts) and the process-wide model cache (``cache.load_model``).

Floor 3: may import ``kernels``, ``config``, ``device``, ``_validate``, ``errors``, ``hits``.
"""
