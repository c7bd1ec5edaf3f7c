"""Failover under stress: does every prompt run once, end, and keep its own result?

Each iteration starts 3 fresh simulators and a Session on them, runs a small sweep (seed x cfg)
and, while it runs, does one thing to one server (the *victim*):

- ``restart``: restarts with no downtime (queue and history forgotten, files kept);
- ``restart_down``: restarts and refuses connections for 0.3-2 s;
- ``kill``: dies for good;
- ``partition``: is cut off for 0.3-2 s but keeps running its queue;
- ``comeback``: restarts and comes back just as its jobs are being moved (about when failover
  fires), while the other servers answer POSTs slowly, so moved copies are still in flight.

Then it waits until every job ended and the servers are idle, and checks, from the simulators'
output files and ledgers (see bench/audit.py), never from the client: prompts executed twice
(must be 0 after a restart or kill, except *unforeseeable* ones: finished, then forgotten before
any client was told); for a partition, the second runs it caused (counted, not preventable); that
every job ended, as what; and that every result is the file its own prompt saved, drawn with its
row's parameters.

Session settings are the defaults except ``down_after=0.2`` and ``failover_after=0.5`` (defaults
5 s and 30 s): failover is what is under test, and at the defaults one iteration would take over
30 s, 200 of them hours. The races being provoked depend on the order of events, not on those
values. ``progress=False`` only hides the progress line.

    python bench/failover_stress.py [--iterations 200] [--seed S] [--only SCENARIO ...]
    python bench/failover_stress.py --replay SCENARIO:SEED      # one iteration, verbose
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
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
from comfynb.sim.library import load_workflow  # noqa: E402

SCENARIOS = ("restart", "restart_down", "kill", "partition", "comeback")
SETTINGS = {"progress": False, "down_after": 0.2, "failover_after": 0.5}
BOUND = 90.0  # seconds for a sweep to end; far above what any scenario needs
QUIET = 0.5  # seconds the servers must stay idle before counting (late copies show up)


@dataclass
class Outcome:
    scenario: str
    seed: int
    jobs: int = 0
    unended: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    misattributed: list = field(default_factory=list)
    doubles: dict = field(default_factory=dict)  # prompt_id -> audit class
    moved: int = 0  # jobs submitted more than once
    details: list = field(default_factory=list)  # how each double run happened (ledgers)
    seconds: float = 0.0

    @property
    def avoidable(self) -> int:
        return sum(kind == audit.AVOIDABLE for kind in self.doubles.values())

    def ok(self) -> bool:
        """The promise: all ended as success, own results, no avoidable double run (a partition's
        second runs are allowed, but only those)."""
        clean = not self.unended and set(self.statuses) <= {"success"} and not self.misattributed
        return clean and self.avoidable == 0


def workflow(steps: int = 2) -> comfynb.Workflow:
    wf = comfynb.Workflow.load(load_workflow("default_txt2img"))
    wf["KSampler.steps"] = steps
    wf["EmptyLatentImage.width"] = wf["EmptyLatentImage.height"] = 64
    return wf


def iteration(scenario: str, seed: int, *, prompts: int = 12, verbose: bool = False) -> Outcome:
    """One randomised run of one scenario (everything random comes from ``seed``)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    out = Outcome(scenario, seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="comfynb-stress-") as tmp:
        session = comfynb.Session.simulated(
            n=3, root=tmp, seed=seed, node_times={"KSampler": rng.uniform(0.03, 0.1)}, **SETTINGS
        )
        try:
            _run(session, scenario, rng, prompts, out, verbose)
        finally:
            session.close()
    out.seconds = time.monotonic() - started
    return out


def _run(session, scenario: str, rng: random.Random, prompts: int, out: Outcome, verbose: bool) -> None:
    sims = session.simulators
    victim = rng.choice(sims)
    seeds = rng.sample(range(10_000), prompts // 2)
    sweep = session.sweep(workflow(), grid={"KSampler.seed": seeds, "KSampler.cfg": [4.0, 7.5]}, tag="stress")
    _wait(lambda: any(j.server == victim.url and j.status == "running" for j in sweep.jobs) or sweep.done(), 30)
    time.sleep(rng.uniform(0.0, 0.15))
    downtime = rng.uniform(0.3, 2.0)
    if verbose:
        print(f"  victim {victim.url}, {scenario}, downtime {downtime:.2f} s")
    fault = None
    if scenario == "restart":
        victim.restart(0)
    elif scenario == "restart_down":
        fault = _background(victim.restart, downtime)
    elif scenario == "kill":
        victim.kill()
    elif scenario == "partition":
        fault = _background(victim.partition, downtime)
    else:  # comeback: back about when failover moves its jobs, whose new POSTs answer slowly
        for sim in sims:
            if sim is not victim:
                sim.faults.update(latency=rng.uniform(0.05, 0.3))
        window = SETTINGS["down_after"] + SETTINGS["failover_after"]
        fault = _background(victim.restart, rng.uniform(0.6 * window, 1.6 * window))

    try:
        sweep.result(BOUND)
    except comfynb.Timeout:
        pass
    if fault is not None:
        fault.join()
    for sim in sims:
        sim.faults.update(latency=0.0)
    # late copies (a resubmission, a POST retried into the restarted server) run now, or never
    alive = [s for s in sims if not s.killed]
    _wait(lambda: victim.killed or _state(session, victim.url) == "up", 30)
    _quiet(alive)

    jobs = list(sweep.jobs)  # the rows sent (rows are sent lazily): the others count as not ended
    out.jobs = len(sweep)
    out.unended = sum(not job.done() for job in jobs) + len(sweep) - len(jobs)
    out.statuses = collections.Counter(job.status for job in jobs)
    out.moved = sum(job.attempts > 1 for job in jobs)
    roots = {sim.url: str(sim.root) for sim in sims}
    expected = {
        job.prompt_id: {"seed": row["KSampler.seed"], "cfg": row["KSampler.cfg"]}
        for job, row in zip(jobs, (sweep.plan.row(i) for i in range(len(jobs))))
    }
    out.misattributed = audit.misattributed([j for j in jobs if j.done()], expected, roots)
    out.doubles = audit.double_runs([j.prompt_id for j in jobs], list(roots.values()), [s.ledger for s in sims])
    out.details = _explain(out.doubles, sims, victim, jobs)
    if verbose:
        for job in jobs:
            print(f"  {job!r}")
        print("\n".join(out.details))


def _explain(doubles: dict, sims: list, victim, jobs: list) -> list[str]:
    """Each double run's executions and submissions, timed from the victim's first outage."""
    t0 = min((o.start for o in victim.ledger.outages), default=0.0)
    names = [f"server {i}{' (victim)' if sim is victim else ''}" for i, sim in enumerate(sims)]
    attempts = {job.prompt_id: job.attempts for job in jobs}
    lines = [f"    submissions: {attempts[pid]} for {pid}" for pid in doubles]
    return lines + audit.explain(doubles, [sim.ledger for sim in sims], names, t0)


def _state(session, url: str) -> str:
    frame = session.servers()
    return frame.loc[frame.url == url, "state"].item()


def _quiet(sims: list) -> None:
    """Wait (bounded) until no simulator has anything queued or running for QUIET seconds."""
    deadline, since = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        if any(s.engine.remaining() for s in sims):
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= QUIET:
            return
        time.sleep(0.02)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _background(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def report(outcomes: list[Outcome]) -> bool:
    """Print one line per scenario; True if the promise held everywhere."""
    print(
        f"{'scenario':>13} {'runs':>5} {'jobs':>6} {'moved':>6} {'unended':>8} {'not ok':>7} {'misattr':>8} "
        f"{'twice:avoidable':>16} {'unforeseeable':>14} {'partition':>10}  verdict"
    )
    all_ok = True
    for scenario in SCENARIOS:
        mine = [o for o in outcomes if o.scenario == scenario]
        if not mine:
            continue
        kinds = collections.Counter(k for o in mine for k in o.doubles.values())
        not_ok = sum(n for o in mine for s, n in o.statuses.items() if s != "success")
        ok = all(o.ok() for o in mine)
        all_ok &= ok
        print(
            f"{scenario:>13} {len(mine):>5} {sum(o.jobs for o in mine):>6} {sum(o.moved for o in mine):>6} "
            f"{sum(o.unended for o in mine):>8} {not_ok:>7} {sum(len(o.misattributed) for o in mine):>8} "
            f"{kinds[audit.AVOIDABLE]:>16} {kinds[audit.UNFORESEEABLE]:>14} {kinds[audit.PARTITION]:>10}  "
            f"{'ok' if ok else 'FAIL'}"
        )
    failed = [o for o in outcomes if not o.ok()]
    for o in failed[:20]:
        print(
            f"  FAIL {o.scenario}:{o.seed}  statuses {dict(o.statuses)} unended {o.unended} "
            f"avoidable twice {o.avoidable} misattributed {o.misattributed[:2]}"
        )
        for line in o.details[:12]:
            print(line)
    if failed:
        print(f"  replay one with: python bench/failover_stress.py --replay {failed[0].scenario}:{failed[0].seed}")
    return all_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: from the clock, printed)")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--prompts", type=int, default=12, help="prompts per sweep")
    parser.add_argument("--replay", help="SCENARIO:SEED, one iteration with details")
    args = parser.parse_args()
    if not args.replay:  # comfynb's warnings narrate every failover; internal errors still show
        logging.getLogger("comfynb").setLevel(logging.ERROR)
    if args.replay:
        scenario, seed = args.replay.split(":")
        outcome = iteration(scenario, int(seed), prompts=args.prompts, verbose=True)
        report([outcome])
        return
    base = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    scenarios = args.only or SCENARIOS
    print(f"failover stress: {args.iterations} iterations, base seed {base}, scenarios {', '.join(scenarios)}")
    rng = random.Random(base)
    outcomes = []
    started = time.monotonic()
    for i in range(args.iterations):
        scenario = scenarios[i % len(scenarios)]
        outcomes.append(iteration(scenario, rng.randrange(2**31), prompts=args.prompts))
        if (i + 1) % 10 == 0:
            print(f"  {i + 1} iterations, {time.monotonic() - started:.0f} s", flush=True)
    ok = report(outcomes)
    print(f"{len(outcomes)} iterations in {time.monotonic() - started:.0f} s: {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
