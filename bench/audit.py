"""Ground truth for the exactly-once benchmarks and tests: what ran, how often, and whose it is.

Nothing here asks the client: executions are counted from the files the simulators saved (they
survive restarts; history does not) and explained with their ledgers; a result's attribution is
checked by reading the generation parameters back from the very file the job's result names, on
the server the job says it ran on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image

from comfynb.sim.images import SIM_CHUNK
from comfynb.sim.ledger import RUN_CHUNK, Ledger, output_runs

AVOIDABLE = "avoidable"  # an earlier run's outcome was known, or still readable: a client bug
UNFORESEEABLE = "unforeseeable"  # the server finished, then died or restarted before telling anyone
PARTITION = "partition"  # a run happened while its server was cut off but still working


def file_marks(root: str | os.PathLike, ref) -> tuple[dict, dict]:
    """(generation parameters, run mark) of the output file an ImageRef names, read from disk."""
    path = Path(root, ref.type, ref.subfolder, ref.filename)
    with Image.open(path) as img:
        text = getattr(img, "text", {})
        return json.loads(text.get(SIM_CHUNK, "{}")), json.loads(text.get(RUN_CHUNK, "{}"))


def misattributed(jobs: Iterable, expected: Mapping[str, Mapping], roots: Mapping[str, str]) -> list[str]:
    """Problems with successful jobs' results: the file each names (on the server it names) must
    be one this prompt saved, drawn with its row's parameters (``expected``: prompt_id ->
    {sim parameter name: value}, e.g. {"seed": 3, "cfg": 7.0})."""
    problems = []
    for job in jobs:
        if job.status != "success":
            continue
        result = job.result()
        if not result.images:
            problems.append(f"{job.prompt_id}: a success without images")
            continue
        ref = result.images[0]
        if ref.server != job.server or job.server not in roots:
            problems.append(f"{job.prompt_id}: result from {ref.server}, job says {job.server}")
            continue
        params, mark = file_marks(roots[job.server], ref)
        want = expected[job.prompt_id]
        got = {k: params.get(k) for k in want}
        if got != dict(want) or mark.get("prompt_id") != job.prompt_id:
            problems.append(f"{job.prompt_id}: file {ref.filename} has {got} of {mark.get('prompt_id')}, row {want}")
    return problems


def double_runs(prompt_ids: Iterable[str], roots: list[str], ledgers: list[Ledger]) -> dict[str, str]:
    """Prompts (of ``prompt_ids``) that ran to success more than once: their output was saved by
    two executions (files under ``roots``), or a server's ledger (same order) has two successful
    runs (a rerun on the same server lifetime is served from its cache and saves no new file).
    Each is classified: AVOIDABLE, UNFORESEEABLE or PARTITION (see the constants)."""
    saved = output_runs(*roots)
    found = {}
    for pid in prompt_ids:
        runs = sorted(
            ((ledger, run) for ledger in ledgers for run in ledger.runs_of(pid) if run.outcome == "success"),
            key=lambda pair: pair[1].started_at,
        )
        if len(saved.get(pid, ())) < 2 and len(runs) < 2:
            continue
        if any(ledger.cut_off_during(run) for ledger, run in runs):
            found[pid] = PARTITION
        elif runs and all(ledger.forgotten_untold(run) for ledger, run in runs[:-1]):
            found[pid] = UNFORESEEABLE
        else:
            found[pid] = AVOIDABLE
    return found


def summary(kinds: Mapping[str, str]) -> Counter:
    return Counter(kinds.values())


def explain(doubles: Mapping[str, str], ledgers: list[Ledger], names: list[str], t0: float = 0.0) -> list[str]:
    """Lines telling how each double run happened: every execution of the prompt (server, lifetime,
    start .. end relative to ``t0``, outcome, when a client was told), then the servers' outages."""
    lines = []
    for pid, kind in doubles.items():
        lines.append(f"    ran twice ({kind}): {pid}")
        for name, ledger in zip(names, ledgers):
            for run in ledger.runs_of(pid):
                told = "never told" if run.told_at is None else f"told {run.told_at - t0:+.3f}"
                end = "-" if run.ended_at is None else f"{run.ended_at - t0:+.3f}"
                lines.append(
                    f"      {name} lifetime {run.lifetime}: {run.started_at - t0:+.3f} .. {end} s, {run.outcome}, {told}"
                )
    if doubles:
        for name, ledger in zip(names, ledgers):
            for o in ledger.outages:
                end = "-" if o.end is None else f"{o.end - t0:+.3f}"
                lines.append(
                    f"      {name} {o.kind} {o.start - t0:+.3f} .. {end} s, dropped {len(o.abandoned)} prompt(s)"
                )
    return lines
