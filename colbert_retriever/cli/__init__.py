"""The ``colbert-retriever`` command line: ``main`` parses the arguments, ``commands`` runs each through the public
API, ``demo`` is ``make demo``.

Floor 9: may import the public package (``colbert_retriever``), ``evaluation``, ``training`` and ``errors``.
"""

from .main import main

__all__ = ["main"]
