"""The stock `openpi-client` from PyPI drives the server. Its numpy<2 pin clashes with this environment, so it lives in
a virtual environment of its own (made once, then cached in the temporary folder) and runs in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np
import pytest

OPENPI_CLIENT = "openpi-client==0.1.2"
# the client imports typing_extensions without declaring it
CLIENT_PACKAGES = [OPENPI_CLIENT, "typing_extensions"]
ENV_DIR = Path(os.environ.get("COSMOS_POLICY_OPENPI_VENV",
                              Path(tempfile.gettempdir()) / "cosmos-policy-tests" / "openpi-client-0.1.2"))

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
from openpi_client import websocket_client_policy

host, port, npz = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with np.load(npz) as data:
    obs = {k: data[k] for k in data.files}
obs["task_description"] = str(obs["task_description"])
client = websocket_client_policy.WebsocketClientPolicy(host=host, port=port)
meta = client.get_server_metadata()
out = {"numpy": np.__version__, "suite": meta["suite"], "chunk_size": meta["chunk_size"], "replies": []}
for _ in range(2):
    reply = client.infer(obs)
    out["replies"].append({"actions": reply["actions"].tolist(), "dtype": str(reply["actions"].dtype),
                           "seed": int(reply["seed"]), "value": float(reply["value"]),
                           "server_ms": float(reply["server_timing"]["total_ms"])})
out["restart"] = client.infer({"__ctrl__": "episode_start"})["next_seed"]
out["after_restart_seed"] = int(client.infer(obs)["seed"])
try:
    client.infer({**obs, "proprio": np.zeros(3)})
except RuntimeError as err:
    out["error"] = str(err)
out["after_error_seed"] = int(client.infer(obs)["seed"])
client.reset()
print(json.dumps(out))
"""


def client_python() -> Path:
    """The virtual environment's python, with openpi-client and its own pinned numpy."""
    python = ENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    marker = ENV_DIR / ".installed"
    if marker.is_file() and marker.read_text() == " ".join(CLIENT_PACKAGES) and python.is_file():
        return python
    ENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(ENV_DIR)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           *CLIENT_PACKAGES], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"could not install {OPENPI_CLIENT} into {ENV_DIR}:\n{done.stdout}\n{done.stderr}")
    marker.write_text(" ".join(CLIENT_PACKAGES))
    return python


def test_stock_openpi_client(server, reference_policy, observation, tmp_path):
    python = client_python()
    npz = tmp_path / "obs.npz"
    np.savez(npz, **{k: np.asarray(v) for k, v in observation.items()})
    done = subprocess.run([str(python), "-c", CLIENT_SCRIPT, "127.0.0.1", str(server.port), str(npz)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("1.")  # the client's own pin, not ours
    assert out["suite"] == "libero" and out["chunk_size"] == 16
    assert [r["seed"] for r in out["replies"]] == [195, 196]
    for reply in out["replies"]:
        actions = np.asarray(reply["actions"], dtype=np.float32)
        assert actions.shape == (16, 7) and reply["dtype"] == "float32"
        reference = reference_policy.infer(observation, seed=reply["seed"])
        np.testing.assert_array_equal(actions, reference["actions"])
        assert reply["value"] == reference["value"] and reply["server_ms"] > 0
    assert out["restart"] == 195 and out["after_restart_seed"] == 195
    assert "proprio" in out["error"]  # the server's text frame, raised by the stock client
    assert out["after_error_seed"] == 196


if __name__ == "__main__":  # make the environment ahead of time: python -m tests.serve.test_openpi_client
    print(client_python(), file=sys.stderr)
