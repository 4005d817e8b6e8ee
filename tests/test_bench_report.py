"""The benchmark report's account of the machine: how its CPU time went during a section."""

from __future__ import annotations

import pytest

from bench.run import Report, cpu_times, machine_shares


def test_shares_of_the_machine_between_two_readings() -> None:
    before = {"user": 1000, "nice": 0, "system": 200, "idle": 5000, "iowait": 10, "irq": 0, "softirq": 30,
              "steal": 100}
    after = {"user": 1580, "nice": 0, "system": 300, "idle": 5200, "iowait": 20, "irq": 0, "softirq": 50,
             "steal": 190}
    shares = machine_shares(before, after)  # 1,000 ticks: 700 busy, 90 stolen, 10 on the disk, 200 idle
    assert shares == pytest.approx({"busy": 0.70, "stolen": 0.09, "disk": 0.01, "idle": 0.2})
    assert machine_shares(after, after) == {}  # no time passed: nothing to say


def test_this_machine_is_read_and_the_report_shows_each_section() -> None:
    now = cpu_times()
    assert now["idle"] > 0 and set(now) >= {"user", "system", "steal"}
    report = Report(quick=True)
    report.section_ran("commands", {"busy": 0.62, "stolen": 0.084, "disk": 0.034, "idle": 0.262})
    report.section_ran("relay", {})  # a machine without /proc/stat: no row
    assert "| commands | 62.0% | 8.4% | 3.4% | 26.2% |" in report.markdown()
    assert "| relay |" not in report.markdown()
