"""The soak benchmark's short version: 2 minutes of load, 5 % bad requests, one stub killed.

The figures (throughput, p99 per window, RSS drift) are printed, not asserted; what is
asserted is the behaviour: no unexpected error, and the killed model serving again
within 10 s. The 30-minute run is `benchmarks/soak.py` (figures in the README).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from soak import RECOVERY_GOAL_S, parse_args, report, run_soak  # noqa: E402

from portable_ep.console import make_console  # noqa: E402

pytestmark = pytest.mark.e2e


def test_two_minute_soak_with_one_kill(tmp_path):
    args = parse_args(["--duration", "120", "--kill-every", "60", "--window", "60", "--warmup", "30",
                       "--work", str(tmp_path)])
    result = run_soak(args, make_console(stderr=True))
    report(result, make_console())
    assert result["unexpected_errors"] == 0, result["unexpected_examples"]
    assert len(result["kills"]) == 1, result["kills"]
    kill = result["kills"][0]
    assert kill["recovered_after_s"] is not None and kill["recovered_after_s"] <= RECOVERY_GOAL_S, result["supervisor_log"]
    assert result["served"] > 1000 and result["bad_refused"] > 10
