"""bench/gpu.py's quick mode runs the GPU benchmark's code paths on CPU for real, so the
one command a GPU machine is given cannot rot."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    ("bf16 matmul ceiling", "TFLOP/s"),
    ("TuduiCNN training", "images/s"),
    ("FastNet training", "images/s"),
    ("pack K=1 packed", "trials/h"),
    ("pack K=8 packed", "trials/h"),
    ("pack K=32 packed", "trials/h"),
    ("sweep pack=1", "trials/h"),
    ("sweep pack=4", "trials/h"),  # quick: 4 trials, so the packed sweep packs all 4
    ("memory pack K=1", "MiB"),
    ("memory pack K=8", "MiB"),
    ("memory pack K=32", "MiB"),
    ("memory total", "MiB"),
]


@pytest.mark.slow
def test_quick_mode_prints_and_writes_every_figure(tmp_path):
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes()
    out = tmp_path / "gpu.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "quick=true", f"out={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results.read_bytes() == before, "quick mode must not edit bench/RESULTS.md"
    written = out.read_text()
    assert re.search(r"^### bench/gpu\.py: cpu, quick \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\)$", written, re.M)
    assert "torch " + __import__("torch").__version__ in written and "cores" in written
    for text in (written, proc.stdout):  # the table printed is the table written
        table = {}
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 4:
                table[cells[0]] = (cells[1], cells[2], cells[3])
        for figure, unit in ROWS:
            assert figure in table, f"no row {figure!r} in:\n{text}"
            value, got_unit, detail = table[figure]
            assert got_unit == unit, (figure, got_unit)
            assert float(value.replace(" ", "")) > 0, (figure, value)
        for k in (1, 8, 32):  # (a) one after another, beside the packed figure
            a = re.search(r"\(a\) one after another ([\d ]+)/h; c/a ([\d.]+)", table[f"pack K={k} packed"][2])
            assert a and float(a[1].replace(" ", "")) > 0 and float(a[2]) > 0, table[f"pack K={k} packed"]
        assert re.search(r"of the ceiling", table["TuduiCNN training"][2])
