"""`make bench` runs: the cheapest section prints its lines (no timing is asserted)."""

from __future__ import annotations

import pytest

from tools import bench


def test_quick_bench_of_the_head_step_prints_its_table(capsys):
    assert bench.main(["--quick", "--device", "cpu", "--sections", "step,reproduce", "--configs", "cpu-head"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cprfl bench on CPU")
    assert "== training step" in out and "== make reproduce" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("cpu-head") and "fp32" in line)
    batch, mode, threads, img_s, ms_step = row.split()[1:6]
    assert (batch, mode, threads) == ("32", "fp32", "1")  # the quick recipe trains on one thread
    assert float(img_s) > 0 and float(ms_step) > 0 and "MiB" in row
    assert "cpu-e2e" not in out and "paper-coco" not in out  # only the section asked for


def test_unknown_section_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--sections", "stpe"])
    assert exc.value.code == 2 and "stpe" in capsys.readouterr().err


def test_the_loader_and_projection_sections_print_their_figures(capsys):
    assert bench.main(["--quick", "--device", "cpu", "--sections", "loader,projection"]) == 0
    out = capsys.readouterr().out
    assert "== input pipeline" in out and "decoded cache" in out and "JPEG" in out
    assert out.count(" img/s   2 workers ") == 4  # JPEG and decoded cache, two presets, 1 and 2 workers
    assert "== projection to GPUs" in out and "GFLOP forward + backward" in out and "H200" in out
