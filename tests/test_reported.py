"""The paper's numbers as data: the avg.Δ formula reproduces the values Table 3 prints."""

from __future__ import annotations

import pytest

from cprfl_repro import reported


@pytest.mark.parametrize("family", ["voc", "coco"])
def test_avg_delta_reproduces_the_printed_table3_values(family):
    base = reported.paper_row(reported.TABLE3, "Baseline", family)
    for row, printed in reported.TABLE3_AVG_DELTA.items():
        ours = reported.avg_delta(reported.paper_row(reported.TABLE3, row, family), base)
        assert ours == pytest.approx(printed[reported.BENCHMARK_INDEX[family]], abs=0.011), row
