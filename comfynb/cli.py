"""Command line: ``comfynb sim`` serves the simulator, ``comfynb demo`` runs a workflow on it."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp

from .sim import Simulator
from .sim.library import load_workflow


def sim(argv: list[str]) -> int:
    """Serve the simulator until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="comfynb sim", description="Run the embedded ComfyUI simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--node-time", type=float, default=0.02, help="seconds of simulated work per node")
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds per sampler step")
    parser.add_argument("--root", help="folder for input/output/temp (default: a temporary one)")
    parser.add_argument("--preview-method", help="server default for previews, e.g. latent2rgb")
    args = parser.parse_args(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):      # SIGTERM stops as cleanly as Ctrl-C
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Simulator(host=args.host, port=args.port, root=args.root,
                             node_time=args.node_time, step_time=args.step_time,
                             preview_method=args.preview_method) as server:
            print(f"ComfyUI simulator listening on {server.url} (files in {server.root}); "
                  "Ctrl-C to stop", flush=True)
            await stop.wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"comfynb sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def demo(argv: list[str]) -> int:
    """Start the simulator, run ComfyUI's default text-to-image workflow over plain HTTP + WebSocket
    and show where the images are."""
    parser = argparse.ArgumentParser(prog="comfynb demo", description=demo.__doc__)
    parser.add_argument("--root", help="folder for the simulator's files (default: a new temporary one)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="comfynb-demo-"))
    return asyncio.run(_demo(root))


async def _demo(root: Path) -> int:
    client_id = uuid.uuid4().hex
    workflow = load_workflow("default_txt2img")
    live = sys.stdout.isatty()             # redraw the step counter in place on a terminal
    async with Simulator(root=root, node_time=0.02, step_time=0.05) as server, \
            aiohttp.ClientSession() as http:
        print(f"Simulated ComfyUI server at {server.url}")
        ws = await http.ws_connect(f"{server.url}/ws?clientId={client_id}", max_msg_size=0)
        async with http.post(f"{server.url}/prompt",
                             json={"prompt": workflow, "client_id": client_id}) as response:
            body = await response.json()
        if response.status != 200:
            print(f"The server refused the workflow: {json.dumps(body)}", file=sys.stderr)
            return 1
        prompt_id = body["prompt_id"]
        print(f"Queued default text-to-image workflow as prompt {prompt_id}")
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            data = event["data"]
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] == "executing" and data["node"] is None:
                break
            if event["type"] == "executing":
                print(f"  running node {data['node']} ({workflow[data['node']]['class_type']})")
            elif event["type"] == "progress" and (live or data["value"] == data["max"]):
                print(f"    step {data['value']}/{data['max']}", end="\r" if data["value"] < data["max"] else "\n")
            elif event["type"] == "execution_error":
                print(f"  failed: {data['exception_message'].strip()}", file=sys.stderr)
        await ws.close()
        async with http.get(f"{server.url}/history/{prompt_id}") as response:
            entry = (await response.json())[prompt_id]
    print(f"Finished: {entry['status']['status_str']}")
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            folder = root / image["type"] / image["subfolder"]
            print(f"  {image['filename']} in {folder}")
    return 0 if entry["status"]["completed"] else 1


COMMANDS = {"sim": sim, "demo": demo}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfynb", description="Drive ComfyUI from notebooks and scripts.")
    parser.add_argument("command", choices=sorted(COMMANDS), help="sim: run the simulator; demo: see it work")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options of the command (see comfynb <command> -h)")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args.args)


if __name__ == "__main__":
    sys.exit(main())
