"""Execute the notebooks in place so they are stored with their outputs (``make notebooks``).

The tests execute them again (nbmake); this script only refreshes what readers see on GitHub.
"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(names):
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        for cell in nb.cells:  # fail loudly on any warning or error output
            for out in cell.get("outputs", []):
                if out.get("name") == "stderr" and "Warning" in out.get("text", ""):
                    raise SystemExit(f"{path.name}: a cell printed a warning:\n{out['text']}")
        nbformat.write(nb, path)
        print(f"executed {path.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
