"""The README's figures agree with the tables beside them: the time-to-target plot and its
table come from one run of bench/sweep_bench.py, the run bench/RESULTS.md says drew it."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

PLOTS = ["docs/sweep_time_to_target.png", "docs/sweep_time_to_target_relucnn.png"]  # the two tasks
HEADER = "| seed | upstream time-to-target s | optimlab time-to-target s | **ttt ratio** |"


def tables(text: str) -> list[tuple[int, list[str]]]:
    """Every sweep_bench table in ``text``: where it starts and its rows."""
    found = []
    for m in re.finditer(re.escape(HEADER), text):
        rows = []
        for line in text[m.start():].splitlines()[2:]:
            if not line.startswith("|"):
                break
            rows.append(line)
        found.append((m.start(), rows))
    return found


@pytest.mark.parametrize("plot", PLOTS)
def test_the_time_to_target_plot_and_its_readme_table_are_one_run(plot):
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    assert (ROOT / plot).is_file()
    (at,) = [m.start() for m in re.finditer(re.escape(f"]({plot})"), readme)]
    readme_rows = max((t for t in tables(readme) if t[0] < at), key=lambda t: t[0])[1]
    said = results.index(f"{plot} is this run")  # RESULTS.md names the run the plot was drawn from
    plot_rows = max((t for t in tables(results) if t[0] < said), key=lambda t: t[0])[1]
    assert readme_rows == plot_rows
    median = next(r for r in readme_rows if r.startswith("| **median**"))
    (ttt,) = re.findall(r"\*\*([\d.]+|inf)\*\*", median)
    prose = readme[at:at + 1500]
    assert f"time-to-target ratio **{ttt}**" in prose, "the text below the plot says other figures"
