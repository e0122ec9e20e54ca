"""`cosmos-policy serve` and `loadtest` from the command line: each user error is one line with exit code 2, and a
real server process answers a bounded load from 8 clients without losing a request."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from cosmos_policy.cli import main

LOAD_REQUESTS = int(os.environ.get("COSMOS_POLICY_LOADTEST_REQUESTS", "5"))  # 50 for the full 8 x 50 figure


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cosmos-policy: error: "), err
    for needle in needles:
        assert needle in lines[0], err


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_port_in_use(capsys, busy_port):
    code, err = run_cli(capsys, "serve", "--port", str(busy_port))
    assert code == 2
    one_line_error(err, f"--port {busy_port}", "in use")
    code, err = run_cli(capsys, "serve", "--port", "0", "--http-port", str(busy_port))
    assert code == 2
    one_line_error(err, f"--http-port {busy_port}", "in use")


def test_serve_unknown_checkpoint(capsys, tmp_path):
    code, err = run_cli(capsys, "serve", "--port", "0", "--http-port", "0", "--checkpoint", str(tmp_path / "none"))
    assert code == 2
    one_line_error(err, "--checkpoint", "none")
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "serve", "--port", "0", "--http-port", "0", "--checkpoint", str(tmp_path / "empty"))
    assert code == 2
    one_line_error(err, "--checkpoint")


@pytest.mark.parametrize("argv,needles", [
    (["serve", "--port", "70000"], ["--port", "70000"]),
    (["serve", "--queue", "0"], ["--queue"]),
    (["serve", "--seed", "-1"], ["--seed"]),
    (["serve", "--port", "9123", "--http-port", "9123"], ["--http-port 9123", "same port"]),
    (["serve", "--port", "0", "--http-port", "0", "--device", "cuda:7"], ["--device"]),
    (["loadtest", "--clients", "0"], ["--clients"]),
    (["loadtest", "--url", "ftp://127.0.0.1:1"], ["--url ftp://127.0.0.1:1"]),
    (["loadtest", "--url", "http://127.0.0.1:1"], ["--url http://127.0.0.1:1", "cannot reach"]),
])
def test_usage_errors(capsys, argv, needles):
    code, err = run_cli(capsys, *argv)
    assert code == 2
    one_line_error(err, *needles)


def test_loadtest_unreachable_websocket(capsys, busy_port):
    """Something listens, but it is no websocket server: still one line."""
    code, err = run_cli(capsys, "loadtest", "--url", f"ws://127.0.0.1:{busy_port}", "--timeout", "2")
    assert code == 2
    one_line_error(err, f"--url ws://127.0.0.1:{busy_port}", "cannot reach")


def test_serve_process_under_load(capsys, tmp_path, tiny_checkpoint):
    """`cosmos-policy serve` in its own process, 8 clients over websocket, then HTTP, then Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "cosmos_policy", "serve", "--port", "0", "--http-port", "0",
                             "--max-batch", "4", "--checkpoint", str(tiny_checkpoint)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ws_url = http_url = None
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline and ws_url is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready after" in line:
                ws_url = re.search(r"ws://[\d.]+:\d+", line)[0]
                http_url = re.search(r"http://[\d.]+:\d+", line)[0]
        assert ws_url, "".join(lines)
        out = tmp_path / "load.json"
        code = main(["loadtest", "--url", ws_url, "--clients", "8", "--requests", "2",
                     "--duration", "300", "--out", str(out)])
        printed = capsys.readouterr().out
        summary = json.loads(out.read_text())
        assert code == 0, printed
        assert summary["ok"] == summary["planned"] == 16 and summary["errors"] == 0
        assert summary["round_trip_ms"]["p50"] >= summary["server_ms"]["p50"] > 0
        assert "p95" in printed and "req/s" in printed
        code = main(["loadtest", "--url", http_url + "/act", "--clients", "2", "--requests", "1"])
        assert code == 0, capsys.readouterr().out
        stop = time.monotonic()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[0]
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    print(f"stopped in {time.monotonic() - stop:.1f} s")


def test_load_eight_clients(server):
    """8 clients x LOAD_REQUESTS on the in-process server (small images): bounded, nothing lost, batches formed."""
    from cosmos_policy.serve.loadtest import render, run_load

    summary = run_load(server.ws_url, clients=8, requests=LOAD_REQUESTS, duration=300, timeout=120)
    print(render(summary))
    assert summary["ok"] == summary["planned"] == 8 * LOAD_REQUESTS, summary["error_samples"]
    assert summary["errors"] == 0 and summary["not_sent"] == 0
    assert summary["mean_batch_size"] > 1  # 8 clients and a batch limit of 4: waiting requests share batches
    assert summary["round_trip_ms"]["p99"] >= summary["round_trip_ms"]["p50"] > 0


def test_load_stops_by_itself(server):
    from cosmos_policy.serve.loadtest import run_load

    start = time.monotonic()
    summary = run_load(server.ws_url, clients=2, requests=1000, duration=1.0, timeout=60)
    assert time.monotonic() - start < 30 and summary["not_sent"] > 0 and summary["errors"] == 0


def test_serve_steps_reach_the_policy(tmp_path):
    """`serve --steps N` loads the policy with N denoising steps (the default: the suite's official count)."""
    import argparse

    from cosmos_policy.serve import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    for argv, expected in (([], 5), (["--steps", "3"], 3)):
        args = parser.parse_args(["--device", "cpu", *argv])
        policy, _ = command.load_policy(args, str(tmp_path))
        assert policy.num_steps == expected
