"""The identical parity suite: every target (provider, image, precision) passes these same tests.

Accuracy is asserted (the bundle's golden outputs within the served precision's budget,
and a random sample equal to the same provider in-process). Latency and throughput are
measured and written to the target's report with a verdict against its budget; they are
not asserted, because timing on shared machines is not a pass/fail fact.
"""
from __future__ import annotations

import pytest

from portable_ep.check.accuracy import check_accuracy
from portable_ep.check.local import local_session
from portable_ep.check.run import CheckOptions, run_check, write_reports
from portable_ep.check.target import Target, resolve

pytestmark = pytest.mark.parity


def _target(parity_target) -> Target:
    return resolve(Target(url=parity_target.url, model=parity_target.model, bundle=parity_target.bundle,
                          metrics_url=parity_target.metrics_url))


def test_served_by_the_expected_provider_and_precision(parity_target):
    target = _target(parity_target)
    if parity_target.provider:
        assert target.provider == parity_target.provider, target.provider_description
    if parity_target.precision:
        assert target.precision == parity_target.precision


def test_golden_outputs_within_the_served_precision_budget(parity_target):
    target = _target(parity_target)
    session, reason = local_session(target)
    try:
        accuracy = check_accuracy(target, session, reason)
    finally:
        if session is not None:
            session.close()
    assert accuracy["checked"]
    assert accuracy["passed"], "\n".join(accuracy["problems"])
    if session is not None:  # the random sample ran: served == in-process on the same provider
        assert accuracy["random"]["passed"]


def test_latency_and_throughput_are_recorded(parity_target, parity_reports):
    target = Target(url=parity_target.url, model=parity_target.model, bundle=parity_target.bundle,
                    metrics_url=parity_target.metrics_url)
    report = run_check(target, CheckOptions(concurrency=(1, 4), requests=60, raw_seconds=0.5))
    write_reports(report, parity_reports / parity_target.model)
    levels = report["latency"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert all(lv["errors"] == 0 and lv["requests"] >= 60 for lv in levels), [lv["first_error"] for lv in levels]
    assert report["verdict"]["exit_code"] in (0, 2)  # 2 = latency budget missed: reported, not failed
