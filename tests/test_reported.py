"""The paper's numbers as data: the avg.Δ formula reproduces the values Table 3 prints."""

from __future__ import annotations

import pytest

from cprfl_repro import reported as paper


@pytest.mark.parametrize("family", ["voc", "coco"])
def test_avg_delta_reproduces_the_printed_table3_values(family):
    base = paper.paper_row(paper.TABLE3, "Baseline", family)
    for row, printed in paper.TABLE3_AVG_DELTA.items():
        ours = paper.avg_delta(paper.paper_row(paper.TABLE3, row, family), base)
        assert ours == pytest.approx(printed[paper.BENCHMARK_INDEX[family]], abs=0.011), row
