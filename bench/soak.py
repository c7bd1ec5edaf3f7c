"""Soak: thousands of prompts over 3 simulators with every fault knob on, two restarts and one
partition, journal on. Every job must end, none lost, none misattributed (image parameters read
back from the files), double runs only where they could not be prevented (counted by the
simulators' files and explained by their ledgers, see bench/audit.py), and the client's memory
must stay flat (RSS printed at the start, at its peak, at the end, and every 1000 prompts).

The simulators run in a subprocess (so the RSS and CPU are the client's alone), driven through
a line-based control channel. Session settings are the defaults, so the partition lasts longer
than ``down_after`` + ``failover_after`` (5 s + 30 s): only then are its jobs moved, which is
when a second run can happen. ``tests/test_soak.py`` runs 500 prompts of the same soak
in-process with short timers.

    python bench/soak.py [--n 5000] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import comfynb  # noqa: E402
from bench import audit  # noqa: E402
from comfynb.journal import Journal  # noqa: E402
from comfynb.sim.ledger import Ledger  # noqa: E402
from comfynb.sim.library import load_workflow  # noqa: E402

BATCH = 500  # prompts per sweep; the next sweep starts when one ends


def faults(scale: float = 1.0) -> dict:
    """Every knob of comfynb.sim.faults on, at rates a bad day could bring; ``scale`` shortens the
    periodic ones for short runs."""
    return {
        "close_every": 20.0 * scale,
        "close_after": int(4000 * scale),
        "drop": {"*": 0.01, "executing_done": 0.03},
        "drop_next": [["executing_done", "executed", "execution_success"]],
        "stall_after": int(3000 * scale),
        "empty_history": 1,
        "http_errors": {"*": 0.01},
        "http_error_status": 502,
        "lost_responses": {"*": 0.005},
        "latency": 0.002,
        "slow_next": {"/prompt": 0.5},
    }


# -- where the simulators run -----------------------------------------------------------------


class InProcess:
    """Controls the simulators of a ``Session.simulated`` session."""

    def __init__(self, session: comfynb.Session):
        self.sims = session.simulators
        self.roots = [str(sim.root) for sim in self.sims]
        self.urls = [sim.url for sim in self.sims]

    def disrupt(self, kind: str, i: int, downtime: float) -> threading.Thread:
        fn = self.sims[i].restart if kind == "restart" else self.sims[i].partition
        thread = threading.Thread(target=fn, args=(downtime,), daemon=True)
        thread.start()
        return thread

    def ledgers(self) -> list[Ledger]:
        return [sim.ledger for sim in self.sims]

    def idle(self) -> bool:
        return not any(sim.engine.remaining() for sim in self.sims)

    def counts(self) -> collections.Counter:
        return sum((sim.faults.counts for sim in self.sims), collections.Counter())


HOST = """
import json, sys, threading
from comfynb.sim import Simulator
config = json.loads(sys.argv[1])
sims = [Simulator(root=root, seed=config["seed"] + i, faults=config["faults"], node_times=config["node_times"])
        for i, root in enumerate(config["roots"])]
contexts = [sim.running() for sim in sims]
for context in contexts:
    context.__enter__()
print(json.dumps([sim.url for sim in sims]), flush=True)
for line in sys.stdin:
    op = json.loads(line)
    if op["op"] in ("restart", "partition"):
        sim = sims[op["i"]]
        fn = sim.restart if op["op"] == "restart" else sim.partition
        threading.Thread(target=fn, args=(op["downtime"],), daemon=True).start()
        reply = None
    elif op["op"] == "ledgers":
        reply = [sim.ledger.as_dict() for sim in sims]
    elif op["op"] == "idle":
        reply = not any(sim.engine.remaining() for sim in sims)
    elif op["op"] == "counts":
        reply = [dict(sim.faults.counts) for sim in sims]
    print(json.dumps(reply), flush=True)
for context in contexts:
    context.__exit__(None, None, None)
"""


class Subprocess:
    """The same controls over simulators served by a child process."""

    def __init__(self, roots: list[str], seed: int, fault_knobs: dict, node_times: dict):
        config = {"roots": roots, "seed": seed, "faults": fault_knobs, "node_times": node_times}
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOST, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.roots = roots
        self.urls = json.loads(self.process.stdout.readline())
        self._lock = threading.Lock()

    def _ask(self, **op):
        with self._lock:
            self.process.stdin.write(json.dumps(op) + "\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())

    def disrupt(self, kind: str, i: int, downtime: float) -> None:
        self._ask(op=kind, i=i, downtime=downtime)

    def ledgers(self) -> list[Ledger]:
        return [Ledger.from_dict(data) for data in self._ask(op="ledgers")]

    def idle(self) -> bool:
        return self._ask(op="idle")

    def counts(self) -> collections.Counter:
        return sum((collections.Counter(c) for c in self._ask(op="counts")), collections.Counter())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


# -- the soak ---------------------------------------------------------------------------------


@dataclass
class Report:
    jobs: int = 0
    unended: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    misattributed: list = field(default_factory=list)
    doubles: dict = field(default_factory=dict)
    journal: collections.Counter = field(default_factory=collections.Counter)
    rss: list = field(default_factory=list)  # (prompts ended, bytes)
    seconds: float = 0.0
    injected: collections.Counter = field(default_factory=collections.Counter)
    details: list = field(default_factory=list)  # how each double run happened
    resent: int = 0  # jobs submitted more than once (moved, or sent again after a restart)

    @property
    def kinds(self) -> collections.Counter:
        return audit.summary(self.doubles)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def workflow() -> comfynb.Workflow:
    wf = comfynb.Workflow.load(load_workflow("default_txt2img"))
    wf["KSampler.steps"] = 2
    wf["EmptyLatentImage.width"] = wf["EmptyLatentImage.height"] = 64
    return wf


def check(sweep, roots: dict[str, str], report: Report) -> list[str]:
    """Count a finished (or timed-out) sweep into ``report``: statuses, jobs not ended, jobs sent
    more than once, results whose file is not their row's; its prompt ids (for the double-run
    audit once the servers are idle)."""
    expected = {}
    for i, job in enumerate(sweep.jobs):  # rows are sent lazily: each row's job exists once it was sent
        row = sweep.plan.row(i)
        expected[job.prompt_id] = {"seed": row["KSampler.seed"], "cfg": row["KSampler.cfg"]}
    jobs = list(sweep.jobs)
    report.jobs += len(sweep)
    report.unended += sum(not job.done() for job in jobs) + len(sweep) - len(jobs)  # rows never sent too
    report.statuses.update(job.status for job in jobs if job.done())
    report.resent += sum(job.attempts > 1 for job in jobs)
    report.misattributed += audit.misattributed([job for job in jobs if job.done()], expected, roots)
    return [job.prompt_id for job in jobs]


def soak(session: comfynb.Session, host, n: int, *, partition: float, seed: int, bound: float = 1800.0) -> Report:
    """Run ``n`` prompts in sweeps of BATCH; restart server 0 at 20 % (1 s down), cut server 1 off
    at 45 % for ``partition`` s, restart server 2 at 70 % (no downtime)."""
    rng = random.Random(seed)
    report = Report()
    disruptions = [(0.2, "restart", 0, 1.0), (0.45, "partition", 1, partition), (0.7, "restart", 2, 0.0)]
    prompt_ids: list[str] = []
    roots = dict(zip(host.urls, host.roots))
    started = time.monotonic()
    ended = 0
    report.rss.append((0, rss()))
    next_mark = 1000
    base = rng.randrange(10**6)
    for first in range(0, n, BATCH):
        size = min(BATCH, n - first)
        seeds = [base + first + i for i in range((size + 1) // 2)]
        sweep = session.sweep(workflow(), grid={"KSampler.seed": seeds, "KSampler.cfg": [4.0, 7.5]}, tag="soak")
        timed_out = False
        try:
            for _ in sweep.as_completed(timeout=bound):
                ended += 1
                while disruptions and ended >= disruptions[0][0] * n:
                    _, kind, i, downtime = disruptions.pop(0)
                    host.disrupt(kind, i, downtime)
                if ended >= next_mark:
                    report.rss.append((ended, rss()))
                    next_mark += 1000
        except comfynb.Timeout:
            timed_out = True  # counted below as not ended
        prompt_ids += check(sweep, roots, report)
        del sweep  # the session lets its jobs go: its memory must not grow with the prompts run
        if timed_out:
            break
    report.unended += n - report.jobs  # rows of sweeps never started (after a time-out) did not end
    report.jobs = n
    report.rss.append((ended, rss()))
    report.seconds = time.monotonic() - started
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not host.idle():  # late copies run now, or never
        time.sleep(0.1)
    time.sleep(0.5)
    ledgers = host.ledgers()
    report.doubles = audit.double_runs(prompt_ids, host.roots, ledgers)
    t0 = min((o.start for ledger in ledgers for o in ledger.outages), default=0.0)
    names = [f"server {i}" for i in range(len(ledgers))]
    report.details = audit.explain(report.doubles, ledgers, names, t0)
    report.injected = host.counts()
    if session.journal is not None:
        record = Journal(session.journal.path)
        report.journal = collections.Counter(s.state for s in record.submissions())
        record.close()
    return report


def print_report(report: Report) -> bool:
    mib = [(ended, value / 2**20) for ended, value in report.rss]
    peak = max(value for _, value in mib)
    print(
        f"jobs {report.jobs} in {report.seconds:.0f} s, statuses {dict(report.statuses)}, not ended {report.unended}, "
        f"submitted more than once {report.resent}"
    )
    print(f"journal states {dict(report.journal)}")
    print(f"misattributed {len(report.misattributed)} {report.misattributed[:3]}")
    kinds = report.kinds
    print(
        f"ran twice: {len(report.doubles)} (partition {kinds[audit.PARTITION]}, forgotten before anyone was told "
        f"{kinds[audit.UNFORESEEABLE]}, avoidable {kinds[audit.AVOIDABLE]})"
    )
    print("\n".join(report.details[:40]))
    print(f"client RSS: start {mib[0][1]:.0f} MiB, peak {peak:.0f} MiB, end {mib[-1][1]:.0f} MiB")
    print("  by prompts ended: " + ", ".join(f"{ended}: {value:.0f}" for ended, value in mib))
    if len(mib) > 2 and mib[-1][0] > mib[1][0]:  # from the first mark on: past start-up
        slope = (mib[-1][1] - mib[1][1]) / (mib[-1][0] - mib[1][0]) * 1000
        print(f"  growth {slope:.1f} MiB per 1000 prompts (each sweep is checked, then let go)")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(report.injected.items())))
    ok = (
        not report.unended
        and set(report.statuses) == {"success"}
        and not report.misattributed
        and kinds[audit.AVOIDABLE] == 0
    )
    print("ok" if ok else "FAILED")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partition", type=float, default=40.0, help="seconds server 1 is cut off")
    args = parser.parse_args()
    logging.getLogger("comfynb").setLevel(logging.ERROR)  # recoveries are logged as warnings
    with tempfile.TemporaryDirectory(prefix="comfynb-soak-") as tmp:
        roots = [os.path.join(tmp, f"server{i}") for i in range(3)]
        host = Subprocess(roots, args.seed, faults(), {"KSampler": 0.005})
        try:
            with comfynb.Session(host.urls, progress=False, journal=os.path.join(tmp, "journal.sqlite")) as session:
                print(f"soak: {args.n} prompts over 3 simulators, every fault on, default settings, seed {args.seed}")
                report = soak(session, host, args.n, partition=args.partition, seed=args.seed)
        finally:
            host.close()
        ok = print_report(report)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
