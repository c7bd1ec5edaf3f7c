"""The ``comfynb`` command, run as a user runs it: in a subprocess, against ``comfynb sim``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from comfynb import __version__
from comfynb.cli import main
from comfynb.sim.images import read_params
from comfynb.sim.library import load_workflow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "comfynb.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``comfynb sim`` in a subprocess (port 0: a free one), stopped by SIGTERM like a service."""
    root = tmp_path_factory.mktemp("sim")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfynb.cli",
            "sim",
            "--port",
            "0",
            "--node-time",
            "0",
            "--step-time",
            "0",
            "--root",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line + proc.stderr.read()
        yield line.split("listening on ")[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.fixture
def workflow(tmp_path) -> Path:
    path = tmp_path / "txt2img.json"
    path.write_text(json.dumps(load_workflow("default_txt2img")))
    return path


SMALL = ["--set", "EmptyLatentImage.width=64", "--set", "EmptyLatentImage.height=64", "--set", "KSampler.steps=2"]


def check_saved(folder: Path, rows: int) -> pd.DataFrame:
    """The folder holds the results in parquet and csv, and each row's PNG was made from its params."""
    frame = pd.read_parquet(folder / "results.parquet")
    assert len(frame) == rows and len(pd.read_csv(folder / "results.csv")) == rows
    assert (frame["status"] == "success").all()
    for _, row in frame.iterrows():
        [name] = row["files"]
        data = (folder / name).read_bytes()
        assert data.startswith(PNG)
        made = read_params(data)
        for column in frame.columns:
            if column.startswith("KSampler."):
                assert made[column.split(".")[1]] == row[column]
    return frame


# -- help, version ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "run", "history", "sim"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert f"usage: comfynb {command}" in capsys.readouterr().out


def test_version_and_missing_command():
    assert cli("--version").stdout.strip() == f"comfynb {__version__}"
    done = cli()
    assert done.returncode == 2 and "required: COMMAND" in done.stderr


# -- demo ----------------------------------------------------------------------------------------


def test_demo_sweeps_on_a_simulator_and_writes_its_folder(tmp_path):
    done = cli("demo", "--node-time", "0", "--step-time", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" success ") == 12
    assert "Saved to comfynb-demo/: images/ (12 files), contact_sheet.png, results.parquet, results.csv" in done.stdout
    assert "12/12" in done.stderr  # the progress line's last state
    folder = tmp_path / "comfynb-demo"
    frame = check_saved(folder, 12)
    assert set(zip(frame["KSampler.seed"], frame["KSampler.cfg"])) == {
        (s, c) for s in (1, 2, 3, 4) for c in (3.0, 5.5, 8.0)
    }
    with Image.open(folder / "contact_sheet.png") as sheet:
        assert sheet.width > 4 * 128 and sheet.height > 3 * 128


# -- run and history against `comfynb sim` ---------------------------------------------------------


def test_run_saves_a_sweep_that_history_reads_back(server, workflow, tmp_path):
    done = cli(
        "run",
        str(workflow),
        "--server",
        server,
        *SMALL,
        "--grid",
        "KSampler.seed=1,2",
        "--grid",
        "KSampler.cfg=4,7.5",
        "--tag",
        "cli-run",
        "--concurrency",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    assert f"Running 4 prompt(s) of {workflow} on {server}" in done.stdout
    frame = check_saved(tmp_path / "out", 4)
    assert list(frame.columns[:2]) == ["KSampler.seed", "KSampler.cfg"]
    assert (frame["tag"] == "cli-run").all()
    assert (tmp_path / "out" / "contact_sheet.png").exists()
    sweep_id = frame["sweep_id"][0]
    assert f"comfynb history --server {server} --sweep-id {sweep_id}" in done.stdout

    shown = cli("history", "--server", server, "--tag", "cli-run")
    assert shown.returncode == 0 and shown.stdout.count(sweep_id) == 4

    done = cli("history", "--server", server, "--sweep-id", sweep_id, "--out", str(tmp_path / "h.parquet"))
    assert done.returncode == 0 and "Wrote 4 row(s)" in done.stdout
    again = pd.read_parquet(tmp_path / "h.parquet")
    assert again["prompt_id"].tolist() == frame["prompt_id"].tolist()
    assert again[["KSampler.seed", "KSampler.cfg"]].equals(frame[["KSampler.seed", "KSampler.cfg"]])

    assert (
        cli(
            "history", "--server", server, "--tag", "cli-run", "--limit", "1", "--out", str(tmp_path / "h.csv")
        ).returncode
        == 0
    )
    newest = pd.read_csv(tmp_path / "h.csv")
    assert newest["index"].tolist() == [3] and newest["images"][0].startswith(server + "/view?")

    assert "No matching prompts" in cli("history", "--server", server, "--tag", "no-such-tag").stdout


def test_run_parses_values_as_json_or_text(workflow, tmp_path):
    done = cli(
        "run",
        str(workflow),
        "--simulate",
        *SMALL,
        "--set",
        "KSampler.seed=5",
        "--set",
        "7.text=blurry, dark",
        "--grid",
        '6.text=["a cat, sitting", "a dog"]',
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    frame = check_saved(tmp_path / "out", 2)
    made = [read_params((tmp_path / "out" / files[0]).read_bytes()) for files in frame["files"]]
    assert [m["positive"] for m in made] == ["a cat, sitting", "a dog"]
    assert {(m["seed"], m["negative"], m["steps"]) for m in made} == {(5, "blurry, dark", 2)}
    assert not (tmp_path / "out" / "contact_sheet.png").exists()  # one axis: no grid of images


def test_failed_prompts_are_saved_and_exit_1(server, workflow, tmp_path):
    done = cli(
        "run",
        str(workflow),
        "--server",
        server,
        *SMALL,
        "--set",
        "4.ckpt_name=missing.safetensors",
        "--no-check",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 1
    assert "1 of 1 prompt(s) did not succeed" in done.stderr and "missing.safetensors" in done.stderr
    assert "Traceback" not in done.stderr
    assert pd.read_csv(tmp_path / "out" / "results.csv")["status"].tolist() == ["error"]


def test_values_the_server_refuses_stop_the_run_before_any_prompt(server, workflow, tmp_path):
    done = cli(
        "run",
        str(workflow),
        "--server",
        server,
        *SMALL,
        "--grid",
        "4.ckpt_name=missing.safetensors",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "1 of 1 rows have values this server refuses; nothing was sent" in done.stderr
    assert "'missing.safetensors' is not offered by the server" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_ui_format_workflow_and_a_picture_run_too(server, tmp_path):
    from comfynb.sim.library import ui_workflow_path

    done = cli(
        "run",
        str(ui_workflow_path("default_txt2img")),
        "--server",
        server,
        *SMALL,
        "--grid",
        "KSampler.seed=1,2",
        "--out",
        str(tmp_path / "ui"),
    )
    assert done.returncode == 0, done.stderr
    picture = next((tmp_path / "ui" / "images").glob("00000.*"))
    done = cli("run", str(picture), "--server", server, "--grid", "KSampler.seed=3", "--out", str(tmp_path / "again"))
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "again" / "results.csv")["status"].tolist() == ["success"]


# -- mistakes and failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "KSampler.sed=1,2"], "has no input 'sed' (address 'KSampler.sed'). Did you mean 'KSampler.seed'"),
        (["--set", "CLIP Text Encode (Prompt).text=x"], "ambiguous: title 'CLIP Text Encode (Prompt)' names 2 nodes"),
        (["--set", "KSampler.cfg=NaN"], "not valid JSON"),
        (["--grid", "KSampler.seed"], "expected ADDRESS=VALUE"),
        (["--concurrency", "0"], "--concurrency: must be at least 1"),
    ],
)
def test_usage_errors_exit_2_before_contacting_the_server(args, message, workflow, tmp_path):
    done = cli("run", str(workflow), "--server", "http://127.0.0.1:1", *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_workflow_or_a_bad_output_name_exits_2(tmp_path):
    done = cli("run", str(tmp_path / "nope.json"), "--simulate", "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("comfynb run: error: no such file")
    done = cli("history", "--server", "http://127.0.0.1:1", "--out", "results.txt")
    assert done.returncode == 2 and "--out must end in .csv or .parquet" in done.stderr


def test_an_unreachable_server_is_named_with_a_hint(workflow, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    for done in (
        cli("run", str(workflow), "--server", url, "--out", str(tmp_path / "out")),
        cli("history", "--server", url),
    ):
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"cannot talk to ComfyUI at {url}" in done.stderr and "start one with `comfynb sim`" in done.stderr
