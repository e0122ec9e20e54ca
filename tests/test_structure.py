"""The layout's rules, read from the source with `ast`: modules of cosmos_policy use each other's public names only,
no two modules of cosmos_policy or cosmos_kernels import each other (directly or round a loop), the folders of
cosmos_policy depend one way (serve, evaluation -> cli -> policy -> model), and no source file is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cosmos_kernels", "cosmos_policy")
MAX_LINES = 400
# cosmos_policy's folders from the bottom up: a module may import its own floor and those below, never above.
FLOORS = {"model": 0, "policy": 1, "testing": 2, "cli": 3, "serve": 4, "evaluation": 4}
# Underscore attributes of other libraries that a module relies on (their only way to the value), with the reason.
LIBRARY_INTERNALS = {
    ("cosmos_policy.evaluation.libero", "_observables"): "robosuite keeps an environment's camera observables there",
    ("cosmos_policy.evaluation.libero", "_sensor"): "robosuite's observable holds its sensor function there",
    ("cosmos_policy.model.blocks", "_cdata"): "torch: the identity of a tensor's storage",
    ("cosmos_policy.model.blocks", "_parameters"): "torch: a module's own parameter table",
    ("cosmos_policy.model.checkpoint", "_utils"): "torch: the module its tensor pickles name",
    ("cosmos_policy.model.checkpoint", "_rebuild_tensor_v2"): "torch: the function its tensor pickles name",
    ("cosmos_policy.model.text_versions", "_version"): "torch: a tensor's in-place version counter",
    ("cosmos_policy.model.vae", "_cached_conv_counts"): "diffusers: the causal convolutions of AutoencoderKLWan",
}


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = {name: path for package in PACKAGES for name, path in _modules(package).items()}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an `ImportFrom` names, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import of `module`, in functions too."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                out.append((submodule, None, node.lineno) if submodule in MODULES else (source, alias.name,
                                                                                         node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    """Module -> the modules of the two packages it imports (a package's own `__init__` re-exports excluded)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = {target for target, _, _ in _imports(module) if target in MODULES and target != module}
        graph[module] = {t for t in targets if not module.startswith(t + ".")}  # importing a parent package
    return graph


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _policy_modules() -> list[str]:
    return [m for m in MODULES if m.split(".")[0] == "cosmos_policy"]


def _private_uses(module: str) -> list[str]:
    found = []
    for target, name, line in _imports(module):
        hidden = [part for part in target.split(".") if _is_private(part)]
        if hidden or (name is not None and _is_private(name)):
            found.append(f"{module}:{line} imports {target}{'.' + name if name else ''}")
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and (module, node.attr) not in LIBRARY_INTERNALS:
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            inherited = isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
            if not (own or inherited):
                found.append(f"{module}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_no_module_of_cosmos_policy_uses_another_modules_private_names():
    found = [use for module in _policy_modules() for use in _private_uses(module)]
    assert found == []


def _cycle(only: str = "") -> list[str] | None:
    """The first import loop found among the modules whose name starts with `only`, or None."""
    graph = {m: {t for t in targets if t.startswith(only)} for m, targets in _edges().items() if m.startswith(only)}
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    assert _cycle() is None


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_cosmos_policy_folders_depend_downwards_only():
    upward, graph = [], _edges()
    for module in _policy_modules():
        low = _floor(module)
        for target in graph[module]:
            high = _floor(target)
            if low is not None and high is not None and high > low:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_check_sees_what_it_forbids(tmp_path, monkeypatch):
    """The checks above fail on a private import, a private attribute, a cycle and an upward import."""
    source = tmp_path / "cosmos_policy" / "model" / "fake.py"
    source.parent.mkdir(parents=True)
    source.write_text("from cosmos_policy.policy import _x\nfrom . import fake2\n\ndef f(o):\n    return o._y\n")
    (source.parent / "fake2.py").write_text("from . import fake\n")
    monkeypatch.setitem(MODULES, "cosmos_policy.model.fake", source)
    monkeypatch.setitem(MODULES, "cosmos_policy.model.fake2", source.parent / "fake2.py")
    assert _private_uses("cosmos_policy.model.fake") == [
        "cosmos_policy.model.fake:1 imports cosmos_policy.policy._x", "cosmos_policy.model.fake:5 reads o._y"]
    fake, fake2 = "cosmos_policy.model.fake", "cosmos_policy.model.fake2"
    assert _cycle(fake) == [fake, fake2, fake]
    with pytest.raises(AssertionError):
        test_cosmos_policy_folders_depend_downwards_only()


@pytest.mark.parametrize("folder", ["cosmos_kernels", "cosmos_policy", "bench"])
def test_no_source_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
