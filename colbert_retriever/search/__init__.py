"""Query time: ``reader`` loads a committed generation as a ``Snapshot``; ``retrieval`` parses a search request
(``Request.make``) and runs it over a snapshot in each mode; ``plaid`` plans one query's search and orders its
stages; ``stages`` holds PLAID's stages (candidates, centroid interaction, exact MaxSim); ``arrays`` is the index
as the stages read it; ``fusion`` combines ranked lists (hybrid); ``parallel`` decides a search's threads.

Floor 5: may import ``codec``, ``model``, ``kernels``, ``store``, ``config``, ``device``, ``_validate``,
``errors``, ``hits``.
"""
