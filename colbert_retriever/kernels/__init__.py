"""The hot loops and who runs them: ``dispatch`` chooses numba, torch or Triton per call and is the only door to
``colbert_retriever.triton_kernels`` and the numba kernels (both imported lazily, never at package import);
``scoring`` is the torch reference MaxSim every kernel is tested against.

Floor 2: may import ``config``, ``errors`` (and torch, numpy, numba lazily).
"""
