"""The tracker's routing rules, fed with frames exactly as ComfyUI sends them (parsed by events.py).

These rules are also exercised end to end over real sockets; here the cases the simulator never
produces (ExecutionBlocked, a server without preview metadata) are pinned down.
"""

from __future__ import annotations

import json
import struct

from comfynb.events import parse_binary, parse_text
from comfynb.tracker import PromptState, Tracker

OURS, OTHER = "p-ours", "p-other"


def frame(type_: str, **data):
    return parse_text(json.dumps({"type": type_, "data": data}))


def type1_preview():
    return parse_binary(struct.pack(">II", 1, 1) + b"\xff\xd8jpeg")


def type4_preview(prompt_id: str):
    meta = json.dumps({"node_id": "3", "prompt_id": prompt_id, "image_type": "image/jpeg"}).encode()
    return parse_binary(struct.pack(">II", 4, len(meta)) + meta + b"\xff\xd8jpeg")


def tracker_with_job():
    completed = []
    tracker = Tracker(on_complete=completed.append)
    state = PromptState(OURS, {"prompt": {"1": {}, "2": {}, "3": {}}}, None)
    tracker.register(state)
    return tracker, state, completed


def test_completion_only_on_final_executing_with_our_prompt_id():
    tracker, state, completed = tracker_with_job()
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed(frame("execution_success", prompt_id=OURS))
    tracker.feed(frame("executing", node=None, prompt_id=OTHER))
    assert completed == [] and state.status == "running"
    tracker.feed(frame("executing", node=None, prompt_id=OURS))
    assert completed == [state] and state.outcome == "success"
    assert tracker.foreign == 1


def test_execution_blocked_is_not_terminal():
    tracker, state, completed = tracker_with_job()
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed(
        frame(
            "execution_error",
            prompt_id=OURS,
            node_id="2",
            exception_type="ExecutionBlocked",
            exception_message="Execution Blocked: ...",
        )
    )
    assert state.outcome is None and not completed
    tracker.feed(frame("executed", prompt_id=OURS, node="3", output={"images": [{"filename": "a.png"}]}))
    tracker.feed(frame("execution_success", prompt_id=OURS))
    tracker.feed(frame("executing", node=None, prompt_id=OURS))
    assert state.outcome == "success" and state.outputs == {"3": {"images": [{"filename": "a.png"}]}}


def test_fully_cached_run_counts_every_node_done():
    tracker, state, completed = tracker_with_job()
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed(frame("execution_cached", prompt_id=OURS, nodes=["1", "2", "3"]))
    tracker.feed(frame("executed", prompt_id=OURS, node="3", output={"images": []}))
    tracker.feed(frame("execution_success", prompt_id=OURS))
    tracker.feed(frame("executing", node=None, prompt_id=OURS))
    assert completed and state.progress.nodes_done == state.progress.nodes_total == 3


def test_type1_previews_go_to_the_job_running_on_our_socket_unless_type4_was_agreed():
    tracker, state, _ = tracker_with_job()
    tracker.feed_preview(type1_preview())  # nothing of ours runs: someone else's broadcast
    assert tracker.foreign == 1 and state.latest_preview is None
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed_preview(type1_preview())
    assert state.latest_preview is not None and state.latest_preview.mime == "image/jpeg"
    state.latest_preview = None
    tracker.feed(frame("feature_flags", supports_preview_metadata=True))
    tracker.feed_preview(type1_preview())  # ours would now come as type 4: this is not ours
    assert state.latest_preview is None and tracker.foreign == 2


def test_type4_previews_are_routed_by_prompt_id():
    tracker, state, _ = tracker_with_job()
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed_preview(type4_preview(OTHER))
    assert state.latest_preview is None and tracker.foreign == 1
    tracker.feed_preview(type4_preview(OURS))
    assert state.latest_preview.prompt_id == OURS


def test_foreign_progress_is_counted_and_ignored():
    tracker, state, _ = tracker_with_job()
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed(frame("progress", prompt_id=OTHER, node="3", value=7, max=9))
    assert (state.progress.value, state.progress.max) == (0, 0) and tracker.foreign == 1


def test_reconnect_replay_without_prompt_id_is_ignored():
    tracker, state, _ = tracker_with_job()
    tracker.feed(frame("executing", node="3"))
    assert state.status == "pending" and tracker.foreign == 0


def signs_of(tracker):
    seen = []
    tracker.on_sign = seen.append
    return seen


def test_queue_shrink_while_ours_runs_is_a_sign_that_it_ended():
    tracker, state, completed = tracker_with_job()
    signs = signs_of(tracker)
    tracker.feed(frame("status", status={"exec_info": {"queue_remaining": 3}}))
    tracker.feed(frame("status", status={"exec_info": {"queue_remaining": 2}}))
    assert signs == []  # someone else's prompt ended: none of ours was running
    tracker.feed(frame("progress", prompt_id=OURS, node="3", value=1, max=2))  # its start was lost
    assert state.status == "running"
    tracker.feed(frame("status", status={"exec_info": {"queue_remaining": 1}}))
    assert signs == [state]
    tracker.feed(frame("executing", node=None, prompt_id=OURS))
    assert completed


def test_another_prompt_starting_while_ours_runs_is_a_sign_that_ours_ended():
    tracker, state, _ = tracker_with_job()
    signs = signs_of(tracker)
    tracker.feed(frame("execution_start", prompt_id=OURS))
    tracker.feed(frame("executing", node="3", prompt_id=OURS))
    assert signs == []
    tracker.feed(frame("execution_start", prompt_id=OTHER))  # a broadcast of a prompt without client_id
    assert signs == [state] and tracker.running is None


def test_an_empty_queue_while_ours_is_unfinished_is_a_sign():
    tracker, state, _ = tracker_with_job()
    signs = signs_of(tracker)
    tracker.feed(frame("status", status={"exec_info": {"queue_remaining": 0}}))
    assert signs == []  # not sent yet
    state.sent = True
    tracker.feed(frame("status", status={"exec_info": {"queue_remaining": 0}}))
    assert signs == [None]  # every sent job of ours is to be looked at


def test_a_tracker_forgets_finished_prompts_beyond_the_latest_few_hundred_and_never_an_unfinished_one():
    tracker = Tracker(on_complete=lambda state: None)
    unfinished = PromptState("p-waiting", {"prompt": {}}, None)
    tracker.register(unfinished)
    for i in range(5000):
        state = PromptState(f"p-{i}", {"prompt": {}}, None)
        tracker.register(state)
        state.settle("success")
    assert len(tracker.jobs) < 300  # not 5001: a long session holds no table of everything it ran
    assert tracker.jobs["p-waiting"] is unfinished
    assert "p-4998" in tracker.jobs  # the latest finished ones are still recognised
    tracker.feed(frame("executing", node=None, prompt_id="p-0"))  # a forgotten one's late event
    assert tracker.foreign == 1
