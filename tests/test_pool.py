"""Several servers behind one Session: dispatch, weights, in-flight limits, capability routing,
failover and rejoining, all against real simulators over real sockets."""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
import urllib.request

import pytest
from conftest import FAST_FAILOVER as FAST
from core.conftest import txt2img

from comfynb import Cancelled, CapabilityError, Interrupted, JobLost, Session, Workflow, as_completed
from comfynb.capabilities import Capabilities
from comfynb.frames import history_frame, merge_rows
from comfynb.sim import Simulator
from comfynb.sim.images import read_params
from comfynb.sim.library import load_workflow

WAIT = 30.0


def wait_until(predicate, timeout=WAIT):
    pause = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError("condition not reached")


def history(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/history?max_items=10000", timeout=10) as resp:
        return json.loads(resp.read())


def state_of(session, url: str) -> str:
    frame = session.servers()
    return frame.loc[frame.url == url, "state"].item()


def seed_of(job) -> int:
    return read_params(job.result(WAIT).images[0].data)["seed"]


def runs_everywhere(sims, prompt_id: str, victim) -> list[str]:
    """Where a prompt ran, from the simulators' ledgers, timed from the victim's first outage."""
    t0 = victim.ledger.outages[0].start if victim.ledger.outages else 0.0
    return [
        f"{'victim' if sim is victim else sim.url} lifetime {r.lifetime}: queued {(r.queued_at or 0) - t0:+.3f}, "
        f"ran {r.started_at - t0:+.3f} .. {(r.ended_at or 0) - t0:+.3f}, {r.outcome}"
        for sim in sims
        for r in sim.ledger.runs_of(prompt_id)
    ] + [f"victim {o.kind} {o.start - t0:+.3f} .. {(o.end or 0) - t0:+.3f}" for o in victim.ledger.outages]


def in_background(fn, *args):
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def invert_workflow() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }


# -- dispatch ----------------------------------------------------------------------------------------


def test_simulated_sweep_over_three_servers_shows_where_each_prompt_ran():
    with Session.simulated(n=3, node_times={"KSampler": 0.01}, **FAST) as session:
        urls = [sim.url for sim in session.simulators]
        assert session.simulator is session.simulators[0] and len(set(urls)) == 3
        sweep = session.sweep(txt2img(0), grid={"KSampler.seed": range(18)}, tag="three")
        frame = sweep.result(WAIT)
        assert set(frame.status) == {"success"}
        assert set(frame.server) == set(urls)  # every server took part
        for job, server in zip(sweep.jobs, frame.server):
            assert job.server == server and seed_of(job) == job.tags["params"]["KSampler.seed"]
        servers = session.servers()
        assert list(servers.url) == urls and set(servers.state) == {"up"}
        assert servers.done.sum() == 18 and servers.inflight.sum() == 0 and servers.failed.sum() == 0
        merged = session.history_frame(tag="three")
        assert sorted(merged.prompt_id) == sorted(frame.prompt_id)
        assert dict(zip(merged.prompt_id, merged.server)) == dict(zip(frame.prompt_id, frame.server))
        by_urls = history_frame(urls, tag="three")
        assert sorted(by_urls.prompt_id) == sorted(frame.prompt_id)


def test_least_loaded_dispatch_keeps_the_rest_client_side(start, connect):
    sims = [start(node_times={"KSampler": 2.0}) for _ in range(3)]
    session = connect([s.url for s in sims])
    jobs = [session.submit(txt2img(seed)) for seed in range(12)]
    wait_until(lambda: sum(sim.engine.remaining() for sim in sims) == 6)
    assert [sim.engine.remaining() for sim in sims] == [2, 2, 2]  # no server holds a backlog
    assert list(session.servers().inflight) == [2, 2, 2]  # max_inflight defaults to 2 per server
    held = [job for job in jobs if job.server is None]  # waiting client-side, not in a server's queue
    assert len(held) == 6 and all(job.status == "pending" for job in held)
    assert {job.server for job in jobs if job.status != "pending"} == {s.url for s in sims}


def test_fast_server_is_not_starved_by_a_slow_one(start, connect):
    slow, fast = start(node_times={"KSampler": 0.3}), start(node_times={"KSampler": 0.005})
    session = connect([slow.url, fast.url])
    jobs = [session.submit(txt2img(seed)) for seed in range(16)]
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed
    ran = collections.Counter(job.server for job in jobs)
    assert ran[fast.url] > 2 * ran[slow.url]


def test_weights_share_out_prompts(start, connect):
    big, small = start(node_times={"KSampler": 2.0}), start(node_times={"KSampler": 2.0})
    session = connect([big.url, small.url], weights={big.url: 3}, max_inflight=None)
    jobs = [session.submit(txt2img(seed)) for seed in range(20)]
    wait_until(lambda: all(job.server for job in jobs))
    ran = collections.Counter(job.server for job in jobs)
    assert abs(ran[big.url] - 15) <= 1 and abs(ran[small.url] - 5) <= 1
    assert list(session.servers().weight) == [3.0, 1.0]


def test_bad_weights_and_limits_are_refused():
    urls = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    with pytest.raises(ValueError, match="2 servers"):
        Session(urls, weights=[1])
    with pytest.raises(ValueError, match="not a server"):
        Session(urls, max_inflight={"http://127.0.0.1:11": 2})
    with pytest.raises(ValueError, match="positive"):
        Session(urls, weights=[1, 0])
    with pytest.raises(ValueError, match="max_inflight"):
        Session(urls, max_inflight=0)


def test_inflight_limit_holds_on_every_server(start, connect):
    sims = [start(node_times={"KSampler": 0.02}) for _ in range(2)]
    session = connect([s.url for s in sims], max_inflight=[1, 3])
    most = [0, 0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for i, sim in enumerate(sims):
                most[i] = max(most[i], sim.engine.remaining())
            stop.wait(0.002)

    sampler = in_background(sample)
    try:
        jobs = [session.submit(txt2img(seed)) for seed in range(20)]
        for seed, job in enumerate(jobs):
            assert seed_of(job) == seed
    finally:
        stop.set()
        sampler.join()
    assert most[0] <= 1 and most[1] <= 3
    assert most[1] > 1  # the limit, not something else, is what held the first server back


# -- capability routing -----------------------------------------------------------------------------------


def test_capability_routing_sends_each_workflow_where_it_can_run(start, connect):
    a = start(checkpoints=["only-a.safetensors"])
    b = start(checkpoints=["only-b.safetensors"])
    del b.nodes["ImageInvert"]  # this server lacks a node class
    session = connect([a.url, b.url])

    def with_model(name: str, seed: int) -> Workflow:
        wf = txt2img(seed)
        wf["CheckpointLoaderSimple.ckpt_name"] = name
        return wf

    on_a = [session.submit(with_model("only-a.safetensors", seed)) for seed in range(4)]
    on_b = [session.submit(with_model("only-b.safetensors", seed)) for seed in range(4)]
    inverted = [session.submit(invert_workflow()) for _ in range(3)]
    for job in on_a + on_b + inverted:
        job.result(WAIT)
    assert {j.server for j in on_a} == {a.url} and {j.server for j in on_b} == {b.url}
    assert {j.server for j in inverted} == {a.url}

    nowhere = session.submit(with_model("sdxl.safetensors", 1))
    with pytest.raises(CapabilityError) as info:
        nowhere.result(WAIT)
    assert set(info.value.missing) == {a.url, b.url}
    assert "'sdxl.safetensors' for CheckpointLoaderSimple.ckpt_name (node 4)" in str(info.value)
    assert nowhere.attempts == 0 and nowhere.status == "error"

    unknown = invert_workflow()
    unknown["2"]["class_type"] = "NoSuchNode"
    with pytest.raises(CapabilityError, match="node class NoSuchNode"):
        session.submit(unknown).result(WAIT)


def test_capabilities_read_both_option_formats():
    caps = Capabilities(
        {
            "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors"], {}]}}},
            "Lora": {"input": {"optional": {"lora_name": ["COMBO", {"options": ["l.pt"]}]}}},
        }
    )
    prompt = {
        "1": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "Lora", "inputs": {"lora_name": "other.pt"}},
        "3": {"class_type": "Missing", "inputs": {}},
    }
    assert caps.missing(prompt) == ["model 'other.pt' for Lora.lora_name (node 2)", "node class Missing (node 3)"]
    assert Capabilities(None).missing(prompt) == []


# -- cancel ------------------------------------------------------------------------------------------------


def test_cancel_and_interrupt_reach_the_right_server(start, connect):
    sims = [start(node_times={"KSampler": 0.3}, step_time=0.05) for _ in range(2)]
    session = connect([s.url for s in sims])
    jobs = [session.submit(txt2img(seed, steps=40)) for seed in range(5)]
    wait_until(lambda: collections.Counter(job.status for job in jobs) == {"running": 2, "queued": 2, "pending": 1})
    running = [job for job in jobs if job.status == "running"]
    queued = [job for job in jobs if job.status == "queued"]
    held = [job for job in jobs if job.status == "pending"]
    assert {j.server for j in running} == {s.url for s in sims} and held[0].server is None
    for job in jobs:
        job.cancel()
    for job in running:
        with pytest.raises(Interrupted):
            job.result(WAIT)
    for job in queued + held:
        with pytest.raises(Cancelled):
            job.result(WAIT)
    assert held[0].attempts == 0
    for job in running:  # interrupted where it ran, and only there
        assert [url for url in (s.url for s in sims) if job.prompt_id in history(url)] == [job.server]
    assert all(sim.engine.remaining() == 0 for sim in sims)


# -- failover ----------------------------------------------------------------------------------------------


def test_server_killed_mid_sweep_jobs_finish_elsewhere_and_it_rejoins(start, connect):
    sims = [start(node_times={"KSampler": 0.05}) for _ in range(3)]
    urls = [s.url for s in sims]
    victim = sims[1]
    session = connect(urls)
    sweep = session.sweep(txt2img(0), grid={"KSampler.seed": range(30)}, tag="killed")
    wait_until(lambda: any(j.done() and j.server == victim.url for j in sweep.jobs))
    # from now on the victim's prompts run for 5 s: the one it starts next is surely unfinished
    # when the restart lands (while the one before may still be being collected)
    victim.settings.node_times["KSampler"] = 5.0
    slow_from = time.monotonic()
    wait_until(lambda: any(r.started_at > slow_from and r.ended_at is None for r in victim.ledger.runs))
    killer = in_background(victim.restart, 2.0)  # refuses connections, then comes back empty
    wait_until(lambda: len(victim.ledger.outages) == 1)  # the restart has landed
    victim.settings.node_times["KSampler"] = 0.05  # as fast as the others once it is back
    there = [j for j in sweep.jobs if j.prompt_id in victim.ledger.outages[0].abandoned]  # what it wiped
    assert there
    wait_until(lambda: state_of(session, victim.url) == "down")

    frame = sweep.result(WAIT)
    assert set(frame.status) == {"success"}  # none lost
    moved = [j for j in there if j.server != victim.url]
    assert moved and all(j.attempts == 2 for j in moved)

    killer.join()
    wait_until(lambda: state_of(session, victim.url) == "up")  # probed, and back in the pool
    for job in sweep.jobs:  # (images of jobs that ended on the victim are served again now)
        assert seed_of(job) == job.tags["params"]["KSampler.seed"]
    later = [session.submit(txt2img(seed)) for seed in range(100, 112)]
    for job in later:
        job.result(WAIT)
    assert victim.url in {job.server for job in later}

    # none ran twice: each prompt is in at most one server's history, the one it is attributed to;
    # the only ones in none finished on the killed server before its restart wiped its history
    histories = {url: history(url) for url in urls}
    for job in sweep.jobs + later:
        found = [url for url, entries in histories.items() if job.prompt_id in entries]
        assert found == [job.server] or (found == [] and job.server == victim.url and job not in later), (
            job,
            runs_everywhere(sims, job.prompt_id, victim),
        )


def test_cut_off_server_that_finished_the_jobs_keeps_them_and_nothing_runs_twice(start, connect):
    cut = start(node_times={"KSampler": 0.1})
    # someone else's 9 s prompt holds its queue: far longer than the cut server needs to be probed
    # back (its probes back off up to 5 s), so the copies moved here are still queued when it rejoins
    busy = start(node_times={"ImageBlur": 3.0})
    session = connect([cut.url, busy.url], weights={cut.url: 10}, max_inflight={cut.url: 4})
    with urllib.request.urlopen(
        urllib.request.Request(f"{busy.url}/prompt", data=json.dumps({"prompt": load_workflow("slow")}).encode())
    ) as resp:
        assert resp.status == 200
    wait_until(lambda: busy.engine.running is not None and session.servers().queue_remaining.iloc[1] == 1)
    jobs = [session.submit(txt2img(seed), tags="cut") for seed in range(3)]
    wait_until(lambda: all(job.server for job in jobs) and any(job.status == "running" for job in jobs))
    assert {job.server for job in jobs} == {cut.url}

    in_background(cut.partition, 1.5)  # unreachable, but it keeps running its queue
    for _ in as_completed(jobs, timeout=WAIT):
        pass
    for seed, job in enumerate(jobs):
        assert job.attempts == 2, "failover should have sent it to the other server while the first was cut off"
        assert seed_of(job) == seed
        assert job.server == cut.url  # it delivered when it came back: that result is kept
    assert state_of(session, cut.url) == "up"

    urllib.request.urlopen(urllib.request.Request(f"{busy.url}/interrupt", data=b"{}")).close()
    wait_until(lambda: busy.engine.remaining() == 0)
    ours = {job.prompt_id for job in jobs}
    assert ours <= set(history(cut.url)) and not ours & set(history(busy.url))  # the copies were deleted
    frame = session.history_frame(tag="cut")
    assert sorted(frame.prompt_id) == sorted(ours) and set(frame.server) == {cut.url}


def test_down_server_without_anywhere_else_keeps_its_jobs(start, connect):
    only = start(node_times={"KSampler": 0.05})
    session = connect([only.url])
    jobs = [session.submit(txt2img(seed)) for seed in range(4)]
    wait_until(lambda: jobs[0].status == "running")
    in_background(only.restart, 0.8)
    wait_until(lambda: state_of(session, only.url) == "down")
    assert session.status().server_state.eq("down").any()
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed and job.server == only.url


def test_server_down_at_start_joins_when_it_comes_up(start, connect):
    first = start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late_url = f"http://127.0.0.1:{port}"
    session = connect([first.url, late_url])
    with session:
        early = [session.submit(txt2img(seed)) for seed in range(4)]
        for job in early:
            job.result(WAIT)
        assert {job.server for job in early} == {first.url}
        assert state_of(session, late_url) == "down" and "<Session" in repr(session)
        start(port=port)
        wait_until(lambda: state_of(session, late_url) == "up")
        later = [session.submit(txt2img(seed)) for seed in range(10, 18)]
        for job in later:
            job.result(WAIT)
        assert late_url in {job.server for job in later}


def test_no_server_ever_answering_fails_jobs_with_its_error(connect):
    session = connect(["http://127.0.0.1:9", "http://127.0.0.1:10"], retries=0)
    with pytest.raises(Exception, match="127.0.0.1:9"):
        session.submit(txt2img(1)).result(WAIT)


def test_merge_rows_keeps_one_row_per_prompt():
    rows = [
        {"prompt_id": "p", "server": "a", "status": "error", "finished_at": 1},
        {"prompt_id": "p", "server": "b", "status": "success", "finished_at": 5},
        {"prompt_id": "q", "server": "a", "status": "success", "finished_at": 9},
        {"prompt_id": "q", "server": "b", "status": "success", "finished_at": 3},
    ]
    assert {(r["prompt_id"], r["server"]) for r in merge_rows(rows)} == {("p", "b"), ("q", "b")}
    assert {(r["prompt_id"], r["server"]) for r in merge_rows(rows, {"q": "a"})} == {("p", "b"), ("q", "a")}


def test_a_reconciliation_under_way_when_jobs_move_leaves_them_alone(start, connect):
    """A down server may still answer HTTP. A reconciliation of it that started before its jobs
    moved elsewhere must not act on them when it hears back: no second submission, no lookup."""
    a, b = start(node_times={"KSampler": 1.5}), start(node_times={"KSampler": 1.5})
    session = connect([a.url, b.url], weights={a.url: 100}, max_inflight=None, failover_after=0.5)
    jobs = [session.submit(txt2img(seed)) for seed in range(3)]
    wait_until(lambda: all(job.status in ("queued", "running") for job in jobs))
    a.faults.update(http_errors={"/prompt": 1.0, "/system_stats": 1.0})  # a refuses prompts and probes
    jobs.append(session.submit(txt2img(3)))  # its POST fails: a is down, and never got this prompt
    wait_until(lambda: state_of(session, a.url) == "down")
    assert {job.server for job in jobs} == {a.url}
    a.faults.update(latency=1.0)  # what a says from now on arrives after the failover
    a.drop_sockets()  # the socket reconnects: a reconciliation of a starts
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed
        assert job.server == b.url and job.result().server == b.url and job.attempts == 2, job
    assert b.engine.counter == len(jobs)  # each prompt was sent to b once


def test_jobs_end_within_a_bound_when_every_server_is_gone(connect):
    """The only server goes away for good: the jobs it holds and those waiting client-side end
    as lost once it has been down for ``give_up_after`` s, instead of waiting forever."""
    sim = Simulator(node_times={"KSampler": 0.5})
    with sim.running():
        session = connect([sim.url], max_inflight=2, give_up_after=1.0)
        jobs = [session.submit(txt2img(seed)) for seed in range(4)]
        wait_until(lambda: [job.status for job in jobs] == ["running", "queued", "pending", "pending"])
    started = time.monotonic()
    late = session.submit(txt2img(9))
    for job in as_completed([*jobs, late], timeout=WAIT):
        with pytest.raises(JobLost, match="been down for 1 s") as info:
            job.result()
        assert job.status == "lost" and sim.url in str(info.value)
    assert time.monotonic() - started < 1.0 + 2.0


def test_cancelling_a_moved_job_that_waits_client_side_is_journalled(start, connect, tmp_path):
    """A job moved off a down server waits client-side for room; cancelled there, its journal row
    says so (else a later resume would find it unfinished and send it again)."""
    from comfynb.journal import Journal

    a, b = start(node_times={"KSampler": 1.0}), start(node_times={"KSampler": 1.0})
    journal = tmp_path / "j.sqlite"
    session = connect([a.url, b.url], weights={a.url: 100}, max_inflight={a.url: 4, b.url: 1}, journal=journal)
    jobs = [session.submit(txt2img(seed)) for seed in range(3)]
    wait_until(lambda: all(job.status in ("queued", "running") for job in jobs))
    assert {job.server for job in jobs} == {a.url}
    restart = in_background(a.restart, 1.5)
    wait_until(lambda: sum(job.attempts == 1 and job.server is None for job in jobs) == 2)
    waiting = next(job for job in jobs if job.server is None)
    waiting.cancel()
    with pytest.raises(Cancelled):
        waiting.result(WAIT)
    record = Journal(journal)
    wait_until(lambda: record.get(waiting.prompt_id).state == "cancelled")  # written just after it ends
    record.close()
    restart.join()


def test_a_job_cancelled_while_its_server_is_cut_off_does_not_run_there_later(start, connect):
    """The cancel cannot reach the server (cut off), so failover ends the job as cancelled; when
    the server is back, its queued copy is deleted like any moved job's, not left to run."""
    a, b = start(node_times={"KSampler": 2.0}), start()
    session = connect([a.url, b.url], weights={a.url: 100}, max_inflight={a.url: 4, b.url: 2})
    first, second = session.submit(txt2img(1)), session.submit(txt2img(2))
    wait_until(lambda: (first.status, second.status) == ("running", "queued"))
    cut = in_background(a.partition, 1.0)  # unreachable, but it keeps its queue and runs it
    wait_until(lambda: state_of(session, a.url) == "down")
    second.cancel()
    with pytest.raises(Cancelled):
        second.result(WAIT)
    assert seed_of(first) == 1
    cut.join()
    wait_until(lambda: state_of(session, a.url) == "up" and a.engine.remaining() == 0)
    assert second.prompt_id not in history(a.url) and second.prompt_id not in history(b.url)


def test_a_result_read_from_a_rejoining_server_does_not_replace_the_one_the_job_already_has(start, connect):
    """A job moved off a cut-off server finishes where it moved to while the server, rejoining,
    reads its own finished copy: the job keeps its one result, server and history (the later read
    is dropped), so job.server is where job.result() came from."""
    a, b = start(node_times={"KSampler": 1.0}), start(node_times={"KSampler": 4.05})
    session = connect([a.url, b.url], weights={a.url: 100})
    job = session.submit(txt2img(1))
    wait_until(lambda: job.status == "running")
    a.faults.update(http_errors={"/system_stats": 1.0, "/ws": 1.0})  # no socket, no probe: a is down
    a.drop_sockets()
    wait_until(lambda: state_of(session, a.url) == "down")
    threading.Event().wait(0.4)  # the job moves to b; a finishes its own copy meanwhile
    a.faults.update(http_errors={}, latency=0.8)  # a rejoins, slowly: b finishes while a's history is read
    assert seed_of(job) == 1
    wait_until(lambda: state_of(session, a.url) == "up")
    assert job.attempts == 2 and job.prompt_id in history(a.url) and job.prompt_id in history(b.url)
    assert job.server == job.result().server == b.url
    assert job.history is job.result().history
