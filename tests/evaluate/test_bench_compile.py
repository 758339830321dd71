"""`bench` with the torch.compile runtime (its own process; inductor compiles on the CPU)."""

from __future__ import annotations

import pytest

from mmcompress.evaluate.bench import bench


@pytest.mark.slow
def test_bench_times_a_torch_compiled_model(tmp_path):
    rows = bench("digits-cnn", tmp_path / "bench", batches=(4,), runtimes=("eager", "compile"), parts=("model",),
                 repeats=3, warmup=1)  # fmt: skip
    assert [(r.runtime, r.batch) for r in rows] == [("eager", 4), ("compile", 4)]
    assert all(r.median_ms > 0 and r.p10_ms <= r.median_ms <= r.p90_ms for r in rows)
    assert (tmp_path / "bench" / "bench.json").is_file()
