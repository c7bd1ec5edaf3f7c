"""Reading the outcome: history at once, retried when missing or missing the announced outputs,
then the jobs API, and never a success without the outputs the socket saw being made."""

from __future__ import annotations

import collections

from .conftest import WAIT, params_of, txt2img


class OutputsLateHistory(dict):
    """The simulator's history, but the first ``late`` reads of an entry show no outputs yet."""

    def __init__(self, original: dict, late: int):
        super().__init__(original)
        self.late = late
        self.reads: collections.Counter = collections.Counter()

    def get(self, key, default=None):
        entry = super().get(key, default)
        if entry is None:
            return entry
        self.reads[key] += 1
        return {**entry, "outputs": {}} if self.reads[key] <= self.late else entry


def test_success_without_outputs_is_read_again(make_session):
    session = make_session()
    engine = session.simulator.engine
    engine.history = history = OutputsLateHistory(engine.history, late=2)
    job = session.submit(txt2img(1))
    assert params_of(job.result(WAIT))["seed"] == 1
    assert history.reads[job.prompt_id] >= 3


def test_outputs_never_in_history_come_from_the_events(make_session):
    session = make_session()
    engine = session.simulator.engine
    engine.history = OutputsLateHistory(engine.history, late=10**6)
    job = session.submit(txt2img(2))
    result = job.result(WAIT)
    assert params_of(result)["seed"] == 2 and result.outputs["9"]["images"]


def test_history_missing_beyond_retries_is_confirmed_by_the_jobs_api(make_session):
    session = make_session(faults={"empty_history": 100})
    job = session.submit(txt2img(3))
    assert params_of(job.result(WAIT))["seed"] == 3
    assert session.simulator.faults.counts["empty_history"] >= 6
