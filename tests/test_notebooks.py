"""Execute every notebook in notebooks/ (quick settings, FLUXODE_QUICK=1) with nbclient."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXODE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_studies_notebook_uses_only_the_readme_public_api():
    """notebooks/studies.ipynb reaches fluxode only through ``fluxode.<name>`` with names in
    ``fluxode.__all__`` that the README's "Studies in Python" section names."""
    import re

    import fluxode

    nb = nbformat.read(ROOT / "notebooks" / "studies.ipynb", as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from fluxode" not in src and re.search(r"import fluxode\.", src) is None
    used = set(re.findall(r"fluxode\.([A-Za-z_]\w*)", src))
    assert used and used <= set(fluxode.__all__), used - set(fluxode.__all__)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Studies in Python", 1)[1].split("\n## ", 1)[0]
    assert all(name in section for name in used), [n for n in used if n not in section]
