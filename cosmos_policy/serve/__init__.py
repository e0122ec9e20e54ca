"""`cosmos-policy serve`: a policy server that robot clients already speak to.

- `PolicyServer` (server.py): one policy, the openpi websocket front end (websocket.py) and the official ALOHA
  HTTP `/act` front end (http.py) on one event loop;
- `InferenceEngine` (engine.py): the bounded first-in-first-out queue and the batching worker;
- wire.py: the msgpack (openpi) and JSON (`json_numpy`) codecs;
- command.py and loadtest.py: the `serve` and `loadtest` subcommands.
"""

from .engine import Busy, InferenceEngine, InputError
from .server import PolicyServer

__all__ = ["Busy", "InferenceEngine", "InputError", "PolicyServer"]
