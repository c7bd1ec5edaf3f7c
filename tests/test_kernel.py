"""In a real ipykernel: submitting shows one widget per cell, the flusher thread updates it while
cells block or await, and ``await job``, ``job.result()``, ``asyncio.gather(*jobs)`` and
``as_completed`` (sync and async) all work, also once the user has applied nest_asyncio."""

from __future__ import annotations

import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipywidgets")
pytest.importorskip("nbval")

WIDGET = "application/vnd.jupyter.widget-view+json"


class Kernel:
    """Runs cells and keeps every iopub message (widget updates come from another thread, at any time)."""

    def __init__(self, client):
        self.client = client
        self.messages: list[dict] = []

    def drain(self) -> None:
        while True:
            try:
                self.messages.append(self.client.get_iopub_msg(timeout=0.05))
            except queue.Empty:
                return

    def run(self, code: str, timeout: float = 60) -> list[dict]:
        """Execute a cell; its outputs (stream, display_data, execute_result); raise if it failed."""
        msg_id = self.client.execute(code)
        outputs, deadline = [], time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            self.messages.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            if kind in ("stream", "display_data", "execute_result"):
                outputs.append(msg)
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                return outputs

    def count(self, msg_type: str) -> int:
        return sum(1 for m in self.messages if m["msg_type"] == msg_type)


@pytest.fixture(scope="module")
def kernel():
    """A kernel of this environment, as the notebooks get (see --nbval-current-env in pyproject)."""
    from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager

    manager = jupyter_client.KernelManager(
        kernel_name=CURRENT_ENV_KERNEL_NAME, kernel_spec_manager=NbvalKernelspecManager()
    )
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield Kernel(client)
    finally:
        client.stop_channels()
        manager.shutdown_kernel()  # gracefully: the kernel's exit removes what it left (simulator folders)


def text(outputs: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")


def widgets(outputs: list[dict]) -> int:
    return sum(1 for m in outputs if WIDGET in m["content"].get("data", {}))


SETUP = """
import asyncio, comfynb as cn
from comfynb.sim.library import load_workflow
session = cn.Session.simulated(step_time=0.08)
wf = cn.Workflow.load(load_workflow("default_txt2img"))
wf["KSampler.steps"] = 5
wf["EmptyLatentImage.width"] = wf["EmptyLatentImage.height"] = 64
job = session.submit(wf)
"""


def test_sync_and_async_waiting_mixed_in_a_kernel(kernel):
    assert widgets(kernel.run(SETUP)) == 1  # the job's widget, shown by submitting
    before = kernel.count("comm_msg")
    assert text(kernel.run("result = await job\nprint(result.status)")) == "success\n"
    assert kernel.count("comm_msg") > before  # updated by the flusher thread while the cell awaited

    outputs = kernel.run(
        "jobs = [session.submit(wf.with_values({'KSampler.seed': s})) for s in range(6)]\n"
        "results = await asyncio.gather(*jobs)\n"
        "print(len(results), {r.status for r in results})"
    )
    assert widgets(outputs) == 1 and text(outputs) == "6 {'success'}\n"  # one widget for the six jobs

    outputs = kernel.run(
        "print(job.result(timeout=30).status, sorted(j.status for j in cn.as_completed(jobs, timeout=30)))"
    )
    assert text(outputs) == "success " + str(["success"] * 6) + "\n"

    outputs = kernel.run(
        "more = [session.submit(wf.with_values({'KSampler.seed': s})) for s in range(10, 13)]\n"
        "print([j.status async for j in cn.as_completed(more, timeout=30)])"
    )
    assert text(outputs) == str(["success"] * 3) + "\n"

    outputs = kernel.run(
        "import nest_asyncio\nnest_asyncio.apply()\n"
        "again = [session.submit(wf.with_values({'KSampler.seed': s})) for s in range(20, 23)]\n"
        "first = await again[0]\n"
        "rest = await asyncio.gather(*again)\n"
        "print(first.status, [r.status for r in rest], again[1].result(timeout=30).status,\n"
        "      len(list(cn.as_completed(again, timeout=30))),\n"
        "      [j.status async for j in cn.as_completed(again, timeout=30)])"
    )
    assert text(outputs) == "success ['success', 'success', 'success'] success 3 " + str(["success"] * 3) + "\n"
    kernel.run("session.close()")


def test_rich_display_and_bounded_widget_traffic(kernel):
    kernel.run(SETUP)
    outputs = kernel.run("result = job.result(timeout=30)\nresult")
    html = outputs[-1]["content"]["data"]["text/html"]
    assert outputs[-1]["msg_type"] == "execute_result" and '<img src="data:image/jpeg;base64,' in html
    kernel.run(
        "session.close()\n"
        "session = cn.Session.simulated()\n"  # no simulated work: events as fast as they come
        "wf['KSampler.steps'] = 30"
    )
    kernel.drain()
    opened, sent = kernel.count("comm_open"), kernel.count("comm_msg")
    outputs = kernel.run(
        "import time\nstarted = time.monotonic()\n"
        "many = [session.submit(wf.with_values({'KSampler.seed': s})) for s in range(100, 300)]\n"
        "for j in cn.as_completed(many, timeout=60): pass\n"
        "took = time.monotonic() - started\n"
        "time.sleep(0.6)\n"  # the flusher shows the end
        "print(sum(j.events for j in many), took)"
    )
    events, took = text(outputs).split()
    kernel.drain()
    assert widgets(outputs) == 1
    assert kernel.count("comm_open") - opened < 60  # the models of one view, not one per job
    updates = kernel.count("comm_msg") - sent
    flushes = (float(took) + 0.6) / 0.25 + 2
    assert 0 < updates < 8 * flushes and updates < int(events) / 10, (updates, events, took)
    kernel.run("session.close()")
