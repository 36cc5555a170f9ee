"""examples/cnn.ipynb runs top to bottom (short settings) on the real 10k split."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "cnn.ipynb"


def test_notebook_has_no_stored_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"nothing printed matches {pattern!r}"
    return float(match.group(1))


@pytest.mark.slow
def test_cnn_notebook_executes(shared_data, monkeypatch):
    monkeypatch.setenv("NPGRAD_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("NPGRAD_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    number = r"([0-9.]+(?:e[+-]?[0-9]+)?)"
    assert "mnist-10k" in text

    # 1. im2col and col2im agree with npgrad.conv2d (and PyTorch) to rounding
    assert _number(r"im2col forward: max \|difference\| " + number, text) < 1e-10
    assert _number(r"col2im backward: max \|difference\| " + number, text) < 1e-10
    # stride 2, 3x3 kernel, 6x6 input: the last row and column are in no window
    assert "input gradient of the last row and column: 0.0 0.0" in text

    # 2. pooling routes to one element per window; every gradcheck passes
    assert "npgrad routes it the same way: True" in text
    assert text.count("gradcheck (full): PASS") == 3  # conv2d, max pooling, batch norm
    assert "gradcheck (full): FAIL" not in text
    assert _number(r"from npgrad " + number, text) < 1e-10  # batch norm by hand
    assert _number(r"as constants: off by " + number, text) > 0.1  # the classic mistake

    # 3. the layer classes pass, checked at stride 2 and padding 1; the wrong one fails, named
    for name in ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm"]:
        assert f"\n{name}: PASS" in text, name
    assert "built as Conv2d(stride=2, padding=1)" in text
    assert "built as Conv2d(stride=3, padding=1, dilation=2)" in text
    assert text.count(": PASS  (inputs") == 5
    assert _number(r"vs by hand: " + number, text) < 1e-10
    assert "BatchNormConstantStats: FAIL" in text
    assert re.search(r"diagnosis: .*constant", text)
    if importlib.util.find_spec("torch") is not None:
        assert text.count("against pytorch: ok") == 5
        assert "against pytorch: backward differs for input 0" in text

    # 4. QUICK: 2 epochs on 2,000 images reach about 0.92 on 2,000 test images
    assert _number(r"test accuracy " + number + " on 2000 test images", text) > 0.85
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the training curve; the filters and feature maps
