"""Execute a notebook top to bottom in test mode and write the executed copy:
``python tests/support/run_notebook.py IN OUT``.

Run by tests/docs/test_notebooks.py with each environment's own Python (the project's .venv, and Colab's stack in
.venv-colab), so it imports nothing of the project: only nbformat and nbclient, which both have.
"""

import os
import sys

import nbformat
from nbclient import NotebookClient


def main(source: str, executed: str) -> None:
  notebook = nbformat.read(source, as_version=4)
  client = NotebookClient(
    notebook,
    timeout=1200,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.dirname(os.path.abspath(source))}},  # cwd: the notebooks/ folder
  )
  try:
    client.execute()
  finally:
    nbformat.write(notebook, executed)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
