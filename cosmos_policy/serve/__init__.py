"""`cosmos-policy serve`: a policy server that robot clients already speak to.

- `PolicyServer` (server.py): one policy, the openpi websocket front end (websocket.py) and the official ALOHA
  HTTP `/act` front end (http.py) on one event loop;
- `InferenceEngine` (engine.py): the bounded first-in-first-out queue and the batching worker;
- wire.py: the msgpack (openpi) and JSON (`json_numpy`) codecs;
- command.py and loadtest.py: the `serve` and `loadtest` subcommands.

Modules here may import the command line's shared pieces (`cosmos_policy.cli`), `cosmos_policy.testing`, the policy,
the model and the package's leaves; nothing else in the package imports them.
"""

from .engine import Busy, InferenceEngine, InputError
from .server import PolicyServer

__all__ = ["Busy", "InferenceEngine", "InputError", "PolicyServer"]
