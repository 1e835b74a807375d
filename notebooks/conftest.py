"""The notebooks write their indexes under NOTEBOOK_WORKDIR: give each test run its own (kernels inherit it)."""

import os
import tempfile

os.environ["NOTEBOOK_WORKDIR"] = tempfile.mkdtemp(prefix="colbert-notebooks-")
