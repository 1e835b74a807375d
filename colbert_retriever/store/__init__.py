"""The index folder on disk: its format (``layout``: file names, typed ``metadata.json``, migrations), file
operations (``storage``: atomic writes, checksummed arrays, the writer lock, ownership), the SQLite document store
(``docstore``: ids, texts, metadata, visibility), BM25 (``lexical``: FTS5) and the metadata filter dialect compiled
to SQL (``filters``).

Floor 1: may import ``errors`` only (and the standard library, numpy, sqlite3). Knows nothing of models, codecs or
search.
"""
