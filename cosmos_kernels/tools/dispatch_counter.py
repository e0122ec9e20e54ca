"""A dispatch counter: the kernel launches, matrix FLOPs and bytes that a piece of PyTorch code costs on a GPU.

Run the code under `DispatchCounter()` (usually on the meta device, which allocates nothing): every aten op and every
custom op that reaches the dispatcher is recorded once, with

- `launches`: the kernels it launches on a GPU. Views, metadata ops and allocations (`empty`, `view`, `expand`,
  `as_strided`, `detach`, ...) launch nothing. A custom op counts the kernels its GPU implementation launches, as
  registered with `register_cost` (its fake implementation runs unseen: wrapping several aten calls in one custom
  op does not reduce the count). A custom op without a registered cost is an error.
- `flops`: matrix FLOPs, as `torch.utils.flop_counter` counts them for aten ops (matmuls, convolutions, attention);
  element-wise work is 0. Custom ops register their own formula.
- `bytes_read`, `bytes_written`: the footprint of the tensors the op reads and writes (a stride-0, broadcast
  dimension counts once; an aten op's `out=` buffer is written, not read), or the custom op's registered formula.

`F.scaled_dot_product_attention` decomposes into its math path on the meta device; on a GPU it is one fused kernel
(flash / memory-efficient / cuDNN), so the counter records it as one launch with the flash-attention FLOP formula.
Ops whose tensors all live on the CPU are host work and are not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

CUSTOM_NAMESPACES = ("cosmos_kernels",)
# Ops that allocate or re-describe memory without a kernel (views are found from their schema as well).
NO_LAUNCH = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
    "_unsafe_view", "view", "reshape", "expand", "as_strided", "t", "transpose", "permute", "unsqueeze", "squeeze",
    "select", "slice", "split", "split_with_sizes", "chunk", "unbind", "unflatten", "flatten", "narrow", "diagonal",
    "view_as_real", "view_as_complex", "_reshape_alias", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
    "is_same_size", "_has_compatible_shallow_copy_type", "set_", "resize_", "_local_scalar_dense", "unfold",
    "expand_as", "view_as", "contiguous", "_nested_tensor_from_mask",
}
# Ops that overwrite their first argument without reading it.
WRITE_ONLY_FIRST = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_"}


@dataclass(frozen=True)
class OpCost:
    launches: int
    flops: int
    bytes_read: int
    bytes_written: int


CostFn = Callable[[tuple, dict, Any], OpCost]
_COSTS: dict[str, CostFn] = {}


def footprint(t: torch.Tensor) -> int:
    """Bytes a kernel touches to read or write `t` once: stride-0 (broadcast) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _tensors(tree: Any) -> list[torch.Tensor]:
    seen, out = set(), []
    for leaf in tree_flatten(tree)[0]:
        if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
            seen.add(id(leaf))
            out.append(leaf)
    return out


def io_bytes(args: Any, out: Any) -> tuple[int, int]:
    """(bytes read, bytes written): every tensor argument read once, every output written once."""
    return sum(footprint(t) for t in _tensors(args)), sum(footprint(t) for t in _tensors(out))


def register_cost(
    op: str,
    flops: Callable[..., int],
    *,
    launches: int | Callable[..., int] = 1,
    bytes_fn: Callable[..., tuple[int, int]] | None = None,
) -> None:
    """Register what the custom op `op` ("namespace::name") costs on a GPU.

    `flops(*args, out=out, **kwargs)` returns its matrix FLOPs (0 for element-wise kernels); `launches` is the
    kernel count of its GPU implementation (or a function of the same arguments); `bytes_fn` returns (read,
    written) and defaults to every tensor argument read once and every output written once.
    """
    def cost(args: tuple, kwargs: dict, out: Any) -> OpCost:
        n = launches(*args, out=out, **kwargs) if callable(launches) else launches
        read, written = bytes_fn(*args, out=out, **kwargs) if bytes_fn else io_bytes((args, kwargs), out)
        return OpCost(int(n), int(flops(*args, out=out, **kwargs)), int(read), int(written))

    _COSTS[op] = cost


def registered_costs() -> set[str]:
    return set(_COSTS)


def attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, out: Any = None,
                    **kwargs: Any) -> int:
    """FLOPs of softmax attention on `(B, L, heads, head_dim)` tensors (QK^T and PV, 2 FLOPs per multiply-add)."""
    b, lq, h, d = q.shape
    return 2 * 2 * b * h * lq * k.shape[1] * d


def no_matrix_flops(*args: Any, **kwargs: Any) -> int:
    """Element-wise kernels (norms, RoPE, the sampler update) do no matrix work."""
    return 0


@dataclass
class OpRecord:
    name: str
    cost: OpCost

    @property
    def matmul(self) -> bool:
        return self.cost.flops > 0


@dataclass
class Totals:
    launches: int = 0
    flops: int = 0
    bytes: int = 0
    nonmatmul_bytes: int = 0
    by_op: dict[str, list[int]] = field(default_factory=dict)  # name -> [calls, launches, flops, bytes]

    def add(self, record: OpRecord) -> None:
        c = record.cost
        moved = c.bytes_read + c.bytes_written
        self.launches += c.launches
        self.flops += c.flops
        self.bytes += moved
        self.nonmatmul_bytes += 0 if record.matmul else moved
        row = self.by_op.setdefault(record.name, [0, 0, 0, 0])
        for i, v in enumerate((1, c.launches, c.flops, moved)):
            row[i] += v


def _on_device(tensors: list[torch.Tensor]) -> bool:
    return any(t.device.type != "cpu" for t in tensors)


def _aten_cost(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: Any) -> OpCost:
    name = func._schema.name.split("::")[-1]
    if name in NO_LAUNCH or func.is_view:
        return OpCost(0, 0, 0, 0)
    packet = func._overloadpacket
    flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
    outs = {a.name for a in func._schema.arguments if a.is_out}  # `out=` buffers are written, not read
    kwargs_read = {k: v for k, v in kwargs.items() if k not in outs} if outs else kwargs
    read_args = (args[1:], kwargs_read) if name in WRITE_ONLY_FIRST else (args, kwargs_read)
    read, written = io_bytes(read_args, out)
    return OpCost(1, int(flops), read, written)


def _sdpa_cost(args: tuple, kwargs: dict, out: torch.Tensor) -> OpCost:
    q, k, v = args[:3]
    mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
    read, written = io_bytes((q, k, v, mask), out)
    return OpCost(1, int(sdpa_flop_count(q.shape, k.shape, v.shape)), read, written)


def _all_meta(args: tuple) -> bool:
    return all(t.device.type == "meta" for t in args[:3] if isinstance(t, torch.Tensor))


def _meta_flash_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any) -> torch.Tensor:
    """The output a GPU's fused attention returns: (B, heads, L, d) over (B, L, heads, d) memory, so that the
    usual `out.transpose(1, 2).flatten(2)` is a view there (the meta math path would need a copy)."""
    if q.dim() != 4:
        return q.new_empty((*q.shape[:-1], v.shape[-1]))
    b, h, lq, _ = q.shape
    return q.new_empty((b, lq, h, v.shape[-1])).transpose(1, 2)


class _FunctionHook(TorchFunctionMode):
    """Records composite functions that a GPU runs as one kernel, and hides their meta decomposition."""

    def __init__(self, counter: DispatchCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not self.counter._suspended:
            with self.counter.suspended():
                out = _meta_flash_output(*args) if _all_meta(args) else func(*args, **kwargs)
            if _on_device(_tensors((args, kwargs))):
                self.counter._record("scaled_dot_product_attention", _sdpa_cost(args, kwargs, out))
            return out
        return func(*args, **kwargs)


class DispatchCounter(TorchDispatchMode):
    """Context manager that records every op dispatched inside it (see the module docstring).

    `records` lists them in order; `totals()` sums them; `section(name)` groups records so that one run can
    measure several parts (say, one network pass and one sampler step) separately.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        self.sections: dict[str, list[OpRecord]] = {}
        self._current: list[list[OpRecord]] = []
        self._suspended = False
        self._function_hook = _FunctionHook(self)

    def __enter__(self) -> DispatchCounter:
        self._function_hook.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._function_hook.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._function_hook.__exit__(*exc)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Ops dispatched inside are not recorded (the decomposition of an op recorded as a whole)."""
        previous, self._suspended = self._suspended, True
        try:
            yield
        finally:
            self._suspended = previous

    @contextmanager
    def section(self, name: str) -> Iterator[list[OpRecord]]:
        records = self.sections.setdefault(name, [])
        self._current.append(records)
        try:
            yield records
        finally:
            self._current.pop()

    def _record(self, name: str, cost: OpCost) -> None:
        record = OpRecord(name, cost)
        self.records.append(record)
        for records in self._current:
            records.append(record)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._suspended:
            return out
        tensors = _tensors((args, kwargs, out))
        if not _on_device(tensors):
            return out
        namespace = func.namespace
        if namespace in CUSTOM_NAMESPACES:
            qualified = func._schema.name
            if qualified not in _COSTS:
                raise KeyError(f"dispatch counter: custom op {qualified} has no registered cost "
                               "(cosmos_kernels.tools.dispatch_counter.register_cost)")
            self._record(qualified, _COSTS[qualified](args, kwargs, out))
        else:
            self._record(f"{namespace}.{func._schema.name.split('::')[-1]}", _aten_cost(func, args, kwargs, out))
        return out

    def totals(self, section: str | None = None) -> Totals:
        totals = Totals()
        for record in self.records if section is None else self.sections.get(section, []):
            totals.add(record)
        return totals
