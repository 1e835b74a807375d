"""Writes: ``writer`` (one write transaction: lock, commit, the build/add/delete/replace writes), ``builder``
(encoding and compressing documents into segments), ``compaction``, ``ingest`` (the long-text policy,
``if_exists``, ``on_conflict``), ``external`` and ``embedded`` (indexes of precomputed embeddings).

Floor 6: may import ``search`` (writers read the committed snapshot), ``codec``, ``model``, ``kernels``,
``store`` and the floor-0/1 modules.
"""
