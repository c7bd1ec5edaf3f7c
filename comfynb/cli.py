"""The ``comfynb`` command: ``demo``, ``run``, ``history`` and ``sim``.

Errors comfynb raises on purpose are printed as one line (no traceback): exit code 2 for a
mistake in the command line or the workflow (nothing was sent), 1 for a failure (unreachable
server, failed prompts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .embedded import is_media, read_embedded
from .errors import ComfyError, Timeout, WorkflowError
from .frames import COLUMNS, KIND_COLUMNS, MEDIA_COLUMNS, history_frame
from .session import Session
from .sweep import make_plan
from .uiformat import is_ui_format
from .workflow import Workflow


class UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


# -- argument values ---------------------------------------------------------------------------


def _value(text: str) -> Any:
    """JSON when it parses (``7``, ``4.5``, ``true``, ``"7"``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _assignment(text: str) -> tuple[str, str]:
    address, sep, value = text.partition("=")
    if not sep or not address:
        raise argparse.ArgumentTypeError(f"expected ADDRESS=VALUE (e.g. KSampler.steps=30), got {text!r}")
    return address, value


def _setting(text: str) -> tuple[str, Any]:
    address, value = _assignment(text)
    return address, _value(value)


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _axis(text: str) -> tuple[str, list]:
    """``ADDR=v1,v2,...``, or ``ADDR=[...]`` (a JSON list) for values that contain commas."""
    address, values = _assignment(text)
    parsed = _value(values)
    items = parsed if isinstance(parsed, list) else [_value(v) for v in values.split(",") if v != ""]
    if not items:
        raise argparse.ArgumentTypeError(f"no values to sweep in {text!r}")
    return address, items


# -- shared by demo and run ----------------------------------------------------------------------


def _table(frame: pd.DataFrame, extra: tuple[str, ...] = ()) -> str:
    """A short text table: parameters, ``extra`` columns, status, run time, file counts per kind, errors."""
    params = [c for c in frame.columns if c not in COLUMNS and c not in MEDIA_COLUMNS]
    shown = frame[[*params, *extra, "status"]].copy()
    shown["run_time"] = frame["run_time"].round(2)
    for column in _file_columns(frame):
        shown[column] = frame[column].map(len)
    if frame["error"].notna().any():
        shown["error"] = frame["error"].fillna("").str.replace(r"\s+", " ", regex=True).str.slice(0, 100)
    return shown.to_string(index=False)


def _file_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's output columns: ``images`` and whichever other kinds (and ``texts``) occur."""
    return [c for c in (*KIND_COLUMNS.values(), "texts") if c in frame.columns]


def _sweep(
    session: Session,
    wf: Workflow,
    grid: dict,
    *,
    out: Path,
    concurrency: int,
    tag: str | None,
    server: str | None = None,
    check: bool = True,
) -> int:
    """Run the sweep with a progress line, print the table, save everything under ``out``;
    ``server`` (a lasting one) is named in a hint for finding these results again."""
    sweep = session.sweep(
        wf, grid=grid or None, rows=None if grid else [{}], concurrency=concurrency, tag=tag, check=check
    )
    try:
        frame = sweep.result()
    except KeyboardInterrupt:
        print(f"\nInterrupted: cancelling {sweep.cancel()} unfinished prompt(s)", file=sys.stderr)
        with contextlib.suppress(Timeout):
            sweep.result(timeout=5)  # give the server a moment to drop them before the session closes
        return 130
    print(_table(frame))
    with warnings.catch_warnings(record=True) as notes:  # e.g. no pyarrow: a note, not a warning's source line
        warnings.simplefilter("always")
        sweep.save(out)
    for note in notes:
        print(f"note: {note.message}", file=sys.stderr)
    written = [
        f"{column}/ ({int(frame[column].map(len).sum())} files)"
        for column in _file_columns(frame)
        if column == "images" or frame[column].map(len).sum()
    ]
    if len(grid) >= 2:
        x, y = list(grid)[:2]
        sweep.contact_sheet(x, y, size=160).save(out / "contact_sheet.png")
        written.append("contact_sheet.png")
    written += [name for name in ("results.parquet", "results.csv") if (out / name).exists()]
    print(f"\nSaved to {out}/: {', '.join(written)}")
    if server is not None:
        print(f"Read them back any time: comfynb history --server {server} --sweep-id {sweep.sweep_id}")
    failed = int((frame["status"] != "success").sum())
    if failed:
        first = frame.loc[frame["status"] != "success", "error"].dropna()
        reason = f"; first error: {first.iloc[0]}" if len(first) else ""
        print(f"comfynb: {failed} of {len(frame)} prompt(s) did not succeed{reason}", file=sys.stderr)
        return 1
    return 0


# -- commands ----------------------------------------------------------------------------------------

DEMO_GRID: dict[str, list[int] | list[float]] = {"KSampler.seed": [1, 2, 3, 4], "KSampler.cfg": [3.0, 5.5, 8.0]}


def demo(args: argparse.Namespace) -> int:
    """The README's first command: a whole sweep, start to saved files, with nothing installed but comfynb."""
    from .sim.library import load_workflow

    wf = Workflow.load(load_workflow("default_txt2img"))
    wf["EmptyLatentImage.width"] = wf["EmptyLatentImage.height"] = 128  # small, so it is quick
    print("Starting a simulated ComfyUI server (no GPU needed)...", flush=True)
    with Session.simulated(node_time=args.node_time, step_time=args.step_time, progress="text") as session:
        total = math.prod(map(len, DEMO_GRID.values()))
        print(
            f"Simulated ComfyUI at {session.simulator.url}: sweeping {' x '.join(DEMO_GRID)} "
            f"over ComfyUI's default text-to-image graph ({total} prompts)",
            flush=True,
        )
        return _sweep(session, wf, DEMO_GRID, out=Path(args.out), concurrency=4, tag="comfynb-demo")


def run(args: argparse.Namespace) -> int:
    """A sweep from a shell; the workflow and the sweep are checked before any server is contacted
    (a UI-format workflow needs the server's node definitions first, so it is read after connecting)."""
    session = None
    if _needs_server(args.workflow):
        session = Session.simulated(progress="text") if args.simulate else Session(args.server, progress="text")
    try:
        wf = Workflow.load(args.workflow, session=session)
        for address, value in args.set:
            wf[address] = value
        grid = dict(args.grid)
        if len(grid) < len(args.grid):
            raise UsageError("an address is given to --grid more than once")
        if grid:
            make_plan(wf, grid=grid)
    except BaseException:
        if session is not None:
            session.close()
        raise
    if session is None:
        session = Session.simulated(progress="text") if args.simulate else Session(args.server, progress="text")
    with session:
        where = "an embedded simulator" if args.simulate else ", ".join(args.server)
        total = math.prod(map(len, grid.values()))
        print(f"Running {total} prompt(s) of {args.workflow} on {where}", flush=True)
        return _sweep(
            session,
            wf,
            grid,
            out=Path(args.out),
            concurrency=args.concurrency,
            tag=args.tag,
            server=args.server[0] if args.server and len(args.server) == 1 else None,
            check=not args.no_check,
        )


def _needs_server(source: str) -> bool:
    """Whether the workflow file is in UI format (directly, or as the only workflow a picture carries)."""
    try:
        data = Path(source).read_bytes()
    except OSError:
        return False  # Workflow.load names the problem
    if is_media(data[:16]):
        try:
            found = read_embedded(data)
        except WorkflowError:
            return False
        return found.prompt is None
    try:
        return is_ui_format(json.loads(data))
    except ValueError:
        return False


def history(args: argparse.Namespace) -> int:
    """Results rebuilt from the server alone, e.g. after the process that ran the sweep is gone."""
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--out must end in .csv or .parquet, not {out.name!r}")
    frame = history_frame(args.server, tag=args.tag, sweep_id=args.sweep_id, limit=args.limit)
    if out is None:
        print(
            _table(frame, ("tag", "sweep_id", "index"))
            if len(frame)
            else f"No matching prompts in the history of {args.server}"
        )
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        joined = {c: frame[c].map(" ".join) for c in _file_columns(frame) if c != "texts"}
        if "texts" in frame.columns:
            joined["texts"] = frame["texts"].map(json.dumps)
        frame.assign(**joined).to_csv(out, index=False)
    else:
        try:
            frame.to_parquet(out, index=False)
        except ImportError:
            raise ComfyError(
                "cannot write parquet without pyarrow: pip install 'comfynb[parquet]', or write a .csv"
            ) from None
    print(f"Wrote {len(frame)} row(s) to {out}")
    return 0


def sim(args: argparse.Namespace) -> int:
    """Serve the simulator until Ctrl-C or SIGTERM."""
    from .sim import Simulator

    async def serve() -> None:
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):  # SIGTERM stops as cleanly as Ctrl-C
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Simulator(
            host=args.host,
            port=args.port,
            root=args.root,
            node_time=args.node_time,
            step_time=args.step_time,
            preview_method=args.preview_method,
        ) as server:
            print(f"ComfyUI simulator listening on {server.url} (files in {server.root}); Ctrl-C to stop", flush=True)
            await stop.wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"comfynb sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


# -- the parser ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfynb", description="Drive ComfyUI servers from notebooks and scripts.")
    parser.add_argument("--version", action="version", version=f"comfynb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, summary: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=description)
        sub.set_defaults(handler=handler)
        return sub

    p = command(
        "demo",
        demo,
        "see it work: a sweep on an embedded simulator, no GPU needed",
        "Start an embedded ComfyUI simulator, sweep seed x cfg over its default text-to-image "
        "graph with a progress line, print the results and save images, contact_sheet.png, "
        "results.parquet and results.csv.",
    )
    p.add_argument("--out", default="comfynb-demo", metavar="DIR", help="folder to write (default: %(default)s)")
    p.add_argument(
        "--node-time",
        type=float,
        default=0.02,
        metavar="S",
        help="seconds of simulated work per node (default: %(default)s)",
    )
    p.add_argument(
        "--step-time",
        type=float,
        default=0.01,
        metavar="S",
        help="seconds per simulated sampler step (default: %(default)s)",
    )

    p = command(
        "run",
        run,
        "run a workflow, or a sweep of it, on a server and save the results",
        "Run an API-format workflow (ComfyUI: Workflow > Export (API)) once, or once per "
        "combination of --grid values, and save images/, results.parquet and results.csv "
        "(and contact_sheet.png for two or more --grid axes) under --out. Values are JSON "
        'when they parse (7, 4.5, true, "7"), else text. Addresses are NODE.INPUT, where '
        "NODE is a node id, title or class, e.g. KSampler.seed or 6.text.",
    )
    p.add_argument(
        "workflow", metavar="WORKFLOW", help="workflow file: API or UI format (.json), or a picture/video ComfyUI made"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help="ComfyUI server, e.g. http://127.0.0.1:8188 (repeat to spread the prompts over several)",
    )
    where.add_argument("--simulate", action="store_true", help="run on an embedded simulator instead (to try it out)")
    p.add_argument(
        "--set",
        action="append",
        type=_setting,
        default=[],
        metavar="ADDR=VALUE",
        help="set an input of every prompt, e.g. KSampler.steps=30 (repeatable)",
    )
    p.add_argument(
        "--grid",
        action="append",
        type=_axis,
        default=[],
        metavar="ADDR=V1,V2",
        help="sweep an input over values, e.g. KSampler.cfg=4,7; a JSON list for values "
        "containing commas; several --grid give every combination",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=8,
        metavar="N",
        help="prompts on the server at once (default: %(default)s)",
    )
    p.add_argument("--tag", metavar="T", help="tag stored with each prompt, to find them with `comfynb history --tag`")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="send every prompt even if a value does not fit the server's /object_info (checked by default)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")

    p = command(
        "history",
        history,
        "the results table rebuilt from a server's history",
        "Print (or write) one row per prompt in the server's history, with the parameters "
        "and tags comfynb sent along; works after the process that ran them is gone.",
    )
    p.add_argument("--server", required=True, metavar="URL", help="ComfyUI server, e.g. http://127.0.0.1:8188")
    p.add_argument("--tag", metavar="T", help="only prompts sent with this tag")
    p.add_argument("--sweep-id", metavar="ID", help="only the prompts of this sweep")
    p.add_argument("--limit", type=_positive, metavar="N", help="only the newest N matching prompts")
    p.add_argument("--out", metavar="FILE", help="write a .csv or .parquet file instead of printing")

    p = command("sim", sim, "serve the embedded ComfyUI simulator", "Run the embedded ComfyUI simulator until Ctrl-C.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188, help="0 picks a free port (default: %(default)s)")
    p.add_argument("--node-time", type=float, default=0.02, help="seconds of simulated work per node")
    p.add_argument("--step-time", type=float, default=0.05, help="seconds per sampler step")
    p.add_argument("--root", help="folder for input/output/temp (default: a temporary one)")
    p.add_argument("--preview-method", help="server default for previews, e.g. latent2rgb")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, WorkflowError) as exc:  # nothing was sent: fix the command or the workflow
        print(f"comfynb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ComfyError, OSError) as exc:  # OSError: e.g. --out not writable
        print(f"comfynb {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
