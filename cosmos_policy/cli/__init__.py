"""The command line, `cosmos-policy` (also `python -m cosmos_policy`): the entry point with its subcommand table and
one-line errors (`entry.py`), one module per subcommand (`demo.py` with its report `demo_report.py`, `roofline.py`,
`backends.py`; `serve` and `eval` live with the server and the evaluation), and the argument types they share
(`argtypes.py`). Modules here may import `cosmos_policy.testing`, the policy, the model, the package's leaves and
cosmos_kernels; the server and the evaluation use the shared pieces, nothing else in the package imports them.
"""

from cosmos_policy.cli.entry import main

__all__ = ["main"]
