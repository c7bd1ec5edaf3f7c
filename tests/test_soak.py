"""Soak, short: 500 prompts over 3 simulators with every fault knob on, two restarts and one
partition, journal on (the scenario of ``bench/soak.py``, in-process and with short timers so it
ends in seconds). Every job ends as a success with its own image, nothing is lost, and a prompt
runs twice only where it could not be prevented (a partition, or a server that finished it and
restarted before anyone was told), counted by the simulators' files and ledgers."""

from __future__ import annotations

import logging

from bench import audit, soak
from comfynb import Session, Timeouts

SHORT = {
    "progress": False,
    "reconcile_after": 0.3,
    "backoff": 0.05,
    "down_after": 0.2,
    "failover_after": 0.5,
    "timeout": Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=0.5),
}


def test_soak_500(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="comfynb")
    session = Session.simulated(
        n=3,
        root=tmp_path / "sims",
        seed=7,
        faults=soak.faults(scale=0.1),
        node_times={"KSampler": 0.002},
        journal=tmp_path / "journal.sqlite",
        **SHORT,
    )
    try:
        report = soak.soak(session, soak.InProcess(session), 500, partition=1.5, seed=7, bound=120.0)
    finally:
        session.close()
    injected = report.injected
    assert injected["restart"] == 2 and injected["partition"] == 1
    for knob in (
        "close_every",
        "close_after",
        "drop",
        "latency",
        "stall",
        "empty_history",
        "http_errors",
        "lost_responses",
        "slow_next",
    ):
        assert injected[knob], f"the {knob} fault never fired"
    assert report.jobs == 500 and report.unended == 0
    assert report.statuses == {"success": 500}, report.statuses
    assert report.misattributed == []
    assert report.journal == {"success": 500}, report.journal
    assert report.kinds[audit.AVOIDABLE] == 0, "\n".join(report.details)
