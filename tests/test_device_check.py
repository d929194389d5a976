"""benchmarks/device_check.py's CPU smoke version (about 1-2.5 minutes on a 2-core CPU)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_device_check_smoke_writes_a_report_naming_the_device(tmp_path):
    import device_check

    report = device_check.main(["--out-dir", str(tmp_path)])
    text = (tmp_path / "device_check-cpu-quick.md").read_text()
    assert "device check: cpu (cpu)" in text and "## 2. A 8-point sweep" in text
    assert report["w2"]["round_ms"] > 0 and report["w2"]["ceiling_ms"] > 0
    assert all(way.get("max_abs_diff_vs_run", 0.0) < 1e-4 for way in report["sweep"]["ways"].values())
