"""Compression: the ColBERTv2 residual codec (``residual``: centroids, bucket cutoffs and weights, compress,
decompress, centroid scores; tensors in, tensors out, never files), centroid training (``kmeans``, faiss) and
ragged arrays as (values, offsets) (``strided``).

Floor 4: may import ``model`` (its float16 products), ``kernels``, ``config``, ``errors``.
"""
