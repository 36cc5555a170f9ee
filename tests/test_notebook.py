"""examples/exercise.ipynb runs top to bottom (short settings) on the real 10k split."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_has_no_stored_outputs():
    nb = nbformat.read(ROOT / "examples" / "exercise.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
def test_exercise_notebook_executes(shared_data, monkeypatch):
    monkeypatch.setenv("NPGRAD_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("NPGRAD_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "examples" / "exercise.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "examples")}})  # fmt: skip
    client.execute()
    text = "\n".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )  # fmt: skip
    assert "mnist-10k" in text
    assert "epoch-0 loss 2" in text  # the exercise's epoch-0 loss, 23-24
    assert "layers vs Tensor engine:" in text and "gradcheck (" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the exercise curve, the Adam curve, the confusion matrix
    assert "digraph npgrad" in text
    # second derivatives: the Hessian checks and Newton's method agree to float64 precision
    for line in (
        "b2 Hessian vs mean of diag(s) - s s^T:",
        "b2 Hessian vs PyTorch:",
        "first-layer Hessian vs PyTorch:",
        "Hessian vs PyTorch:",
    ):
        found = re.search(rf"^{re.escape(line)} (\S+)", text, re.M)
        assert found and float(found.group(1)) < 1e-8, line
    newton = re.findall(r"Newton step \d: loss \S+, \|gradient\| (\S+)", text)
    assert len(newton) == 8 and float(newton[-1]) < 1e-8 < float(newton[0])
