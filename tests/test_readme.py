"""The README's examples, run as a reader would run them: every ```python block, and every ```bash block after the
first two (CI runs those two as they are), each in a subprocess in a scratch folder, with a time limit.

A block whose first line is `# needs: ...` says what it needs; the requirements this file knows are listed in NEEDS,
and a block that needs what this machine lacks (a CUDA GPU, the Hugging Face Hub, PyPI) is skipped with that reason.
Shell commands run in a folder that links to the repository's top-level entries (so `pytest bench/` and
`python -m bench.report` find what they would find in a checkout) and keeps what they write. In a shell block:

- `pip install ...` is not run (the package is installed); a local install must carry `--no-build-isolation`, and
  the block is skipped when an extra it installs is missing here;
- a command that takes minutes runs as its quick variant in QUICK (one benchmark group, `--help`, collection only);
- `cosmos-policy serve` (random weights) is started on free ports and the commands after it, the loadtest, and the
  openpi client example (in the client's own virtual environment) are run against it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_BLOCKS = 2  # the first two bash blocks: CI runs them in a fresh venv
TIME_LIMIT_S = 300

# what a `# needs:` line may name -> whether this machine has it (None: a server, run by test_serving_examples)
NEEDS = {
    "CUDA GPU": torch.cuda.is_available(),
    "Hugging Face Hub": False,  # the tests run offline
    "checkpoint folder": False,
    "tokenizer.pth": False,
    "PyPI": False,
    "a GPU for its speed": True,  # not a requirement: it runs anywhere, slowly
    "running server": None,
}

# command as the README writes it -> the quick variant run here, for those that take minutes on a CPU
QUICK = {
    "python -m pytest bench/ --benchmark-only --benchmark-json=bench.json":
        "python -m pytest bench/bench_adaptive_norm.py -k 'rms_norm and libero and fp32 and not compile' "
        "--benchmark-only --benchmark-json=bench.json -p no:cacheprovider -q",
    "python -m pytest bench/bench_diffusers.py --benchmark-only":
        "python -m pytest bench/bench_diffusers.py --benchmark-only --collect-only -p no:cacheprovider -q",
    "python -m cosmos_kernels.tools.compile_report": "python -m cosmos_kernels.tools.compile_report --help",
    "python -m cosmos_kernels.tools.compile_report --json": "python -m cosmos_kernels.tools.compile_report --help",
}

# extra -> a module it brings
EXTRA_MODULES = {"policy": "diffusers", "bench": "pytest_benchmark", "serve": "websockets", "libero": "libero",
                 "ray": "ray"}


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def needs(self) -> list[str]:
        first = self.text.splitlines()[0] if self.text.strip() else ""
        match = re.match(r"#\s*needs:\s*(.*)", first)
        if match is None:
            return []
        listed = re.sub(r"\([^)]*\)", "", match.group(1).split(";")[0])  # "(...)" explains, it lists nothing
        return [n.strip() for n in re.split(r",| and ", listed) if n.strip()]

    def __str__(self) -> str:
        return f"README.md:{self.line} {self.lang}"


def blocks() -> list[Block]:
    found, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.fullmatch(r"```(\w+)\s*", lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(match.group(1), i + 1, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return found


def python_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang == "python"]


def shell_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang == "bash"][CI_BLOCKS:]


def commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, `&&` chains split, comment-only lines dropped."""
    text = block.text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        for part in line.split("&&"):
            if shlex.split(part, comments=True):
                out.append(part.strip())
    return out


def normalized(command: str) -> str:
    return " ".join(shlex.split(command, comments=True))


def missing_need(block: Block) -> str | None:
    """Why `block` cannot run here, or None."""
    for need in block.needs:
        known = [key for key in NEEDS if key.lower() in need.lower()]
        assert known, f"{block}: unknown requirement {need!r} in its `# needs:` line; known: {list(NEEDS)}"
        for key in known:
            if NEEDS[key] is None:
                return f"needs {need}: run by test_serving_examples"
            if not NEEDS[key]:
                return f"needs {need}"
    return None


def environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "PYTHONUNBUFFERED": "1"}


def checkout_view(tmp_path: Path) -> Path:
    """A folder that looks like the repository's root (its top-level entries linked) but keeps what runs write."""
    view = tmp_path / "checkout"
    view.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", "README.md") and not entry.name.startswith("."):
            (view / entry.name).symlink_to(entry)
    return view


def run(command: str, cwd: Path, python: str | None = None) -> subprocess.CompletedProcess:
    args = [python or sys.executable, "-"] if python else ["bash", "-c", command]
    return subprocess.run(args, input=command if python else None, cwd=cwd, env=environment(), capture_output=True,
                          text=True, timeout=TIME_LIMIT_S)


def check_install(command: str, block: Block) -> None:
    """A local install builds against the installed torch; the extras it names are installed here, else skip."""
    words = shlex.split(command, comments=True)
    local = [w for w in words if w == "." or w.startswith(".[")]
    if local:
        assert "--no-build-isolation" in words, f"{block}: `{command}` needs --no-build-isolation"
    for target in local:
        for extra in re.findall(r"[\w-]+", target.partition("[")[2]):
            module = EXTRA_MODULES.get(extra)
            if module is not None and importlib.util.find_spec(module) is None:
                pytest.skip(f"the [{extra}] extra is not installed here")


def is_serve(command: str) -> bool:
    return shlex.split(command, comments=True)[:2] == ["cosmos-policy", "serve"]


# -- the README's structure --------------------------------------------------------------------------------------

def test_every_needs_line_is_understood_and_quick_variants_are_current():
    for block in blocks():
        missing_need(block)  # asserts that every requirement is known
    written = {normalized(c) for b in shell_blocks() for c in commands(b)}
    assert set(QUICK) <= written, f"QUICK names commands the README no longer has: {set(QUICK) - written}"
    text = README.read_text()
    assert "[--json]" not in text.split("## Compile report")[1].split("##")[0]  # a pasted command must run


def test_the_bench_extra_provides_pytests_ini_options():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    options = config["tool"]["pytest"]["ini_options"]
    bench = config["project"]["optional-dependencies"]["bench"]
    if "timeout" in options:  # without the plugin `pytest bench/` warns "Unknown config option: timeout"
        assert any(req.startswith("pytest-timeout") for req in bench)


# -- the examples ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", python_blocks(), ids=str)
def test_python_example(block, tmp_path):
    reason = missing_need(block)
    if reason:
        pytest.skip(reason)
    done = run(block.text, tmp_path, python=sys.executable)
    assert done.returncode == 0, f"{block} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("block", shell_blocks(), ids=str)
def test_shell_block(block, tmp_path):
    reason = missing_need(block)
    if reason:
        pytest.skip(reason)
    todo = commands(block)
    if any(is_serve(c) for c in todo):
        pytest.skip("a server: run by test_serving_examples")
    if shutil.which("cosmos-policy") is None and any(c.startswith("cosmos-policy") for c in todo):
        pytest.skip("the cosmos-policy command is not installed")
    view = checkout_view(tmp_path)
    ran = set()
    for command in todo:
        if command.startswith("pip install"):
            check_install(command, block)
            continue
        quick = QUICK.get(normalized(command), command)
        if quick in ran:  # two commands with one quick variant (`--help`)
            continue
        ran.add(quick)
        done = run(quick, view)
        assert done.returncode == 0, f"{block}: `{command}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_serving_examples(tmp_path):
    """The offline `cosmos-policy serve`, then the loadtest after it and the openpi client example against it."""
    serve_block = next(b for b in shell_blocks() if not b.needs and any(is_serve(c) for c in commands(b)))
    if shutil.which("cosmos-policy") is None:
        pytest.skip("the cosmos-policy command is not installed")
    todo = commands(serve_block)
    for command in todo[: next(i for i, c in enumerate(todo) if is_serve(c))]:
        check_install(command, serve_block)
    serve = next(c for c in todo if is_serve(c))
    log = tmp_path / "serve.log"
    with open(log, "w") as out:  # free ports: other runs on this machine may hold the defaults
        server = subprocess.Popen(shlex.split(serve, comments=True) + ["--port", "0", "--http-port", "0"],
                                  cwd=tmp_path, env=environment(), stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_until_ready(server, log)
        for command in todo[todo.index(serve) + 1:]:
            done = run(command.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), tmp_path)
            assert done.returncode == 0, f"`{command}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        client_examples = [b for b in python_blocks() if any("running server" in n for n in b.needs)]
        assert client_examples, "the openpi client example is gone"
        python = openpi_client_python()
        for block in client_examples:
            done = run(block.text.replace("port=8000", f"port={port}"), tmp_path, python=python)
            assert done.returncode == 0, f"{block} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            assert "(16, 7)" in done.stdout
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_ready(server: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + TIME_LIMIT_S
    while time.monotonic() < deadline:
        match = re.search(r"ready after .* websocket ws://127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return int(match.group(1))
        if server.poll() is not None:
            pytest.fail(f"cosmos-policy serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"cosmos-policy serve was not ready after {TIME_LIMIT_S} s:\n{log.read_text()[-3000:]}")


def openpi_client_python() -> str:
    """The client's own virtual environment, with what the README's install line names (made once, cached)."""
    from tests.serve.test_openpi_client import CLIENT_PACKAGES, client_python

    line = next(c for b in shell_blocks() for c in commands(b) if "openpi-client" in c)
    assert sorted(shlex.split(line, comments=True)[2:]) == sorted(CLIENT_PACKAGES), line
    try:
        return str(client_python())
    except pytest.fail.Exception as err:  # offline: PyPI cannot be reached
        pytest.skip(f"no openpi-client environment: {str(err).splitlines()[0]}")
