"""`--compile`: torch.compile a model, and fall back to eager mode with a warning where it fails.

torch.compile is lazy: `torch.compile(model)` always succeeds, and the tracing and code
generation run at the first call. That is where it fails on a machine without what its backend
needs (inductor on CPU needs a C++ compiler; some Python versions and platforms have no Dynamo).
`CompiledWithFallback` therefore tries the compiled module on every call until one fails, then
logs one warning and runs the eager module from then on. A failing call is simply run again in
eager mode, and a genuine error in the model is raised again by the eager run. Dynamo traces
with fake tensors, so a failed compilation itself touches no weight; but where the model has a
graph break, a first part may already have run compiled (updating BatchNorm statistics) before a
later part fails to compile. So before each call with input shapes or a train/eval mode not seen
yet (the calls on which Dynamo compiles), the wrapper keeps a copy of the module's buffers, and
puts it back if that call fails. The backward is compiled lazily too (AOTAutograd compiles it at
the first backward call), so on such a call the wrapper also runs the new graph's backward once,
into no `.grad` (`_compile_backward`): a backward that does not compile fails inside the wrapper,
which falls back as for the forward, instead of in the training loop's `loss.backward()`.

The wrapper holds the eager module as `module` (its only child), so its parameters are the
model's own; main.py saves the unwrapped model, so checkpoints never carry the wrapper's prefix.
It passes on what the training loop needs from the module it wraps: DDP's `no_sync` (gradient
accumulation without an all-reduce per iteration; the compiled module calls the same DDP).
The compiled module is kept outside the module tree (not registered), so `state_dict()`,
`parameters()` and `.to()` see each weight once.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

logger = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    """`Outer: Root: first line of the root cause's message` (Dynamo wraps the backend's error)."""
    names, root = [type(exc).__name__], exc
    while len(names) < 5:
        inner = root.__cause__ or getattr(root, "inner_exception", None)
        if not isinstance(inner, BaseException):
            break
        root = inner
        names.append(type(root).__name__)
    lines = str(root).strip().splitlines()
    return f"{': '.join(dict.fromkeys(names))}: {lines[0] if lines else ''}"[:300]


class CompiledWithFallback(nn.Module):
    """`module`, run through `torch.compile(module, **compile_kwargs)` while that works."""

    def __init__(self, module: nn.Module, **compile_kwargs) -> None:
        super().__init__()
        self.module = module
        self.failure: str | None = None  # why compilation was given up, once it was
        compiled = None
        try:
            compiled = torch.compile(module, **compile_kwargs)
        except Exception as exc:  # no torch.compile, or Dynamo unsupported on this Python
            self._give_up(exc)
        object.__setattr__(self, "_compiled", compiled)  # not a registered submodule
        self._seen: set = set()  # (training, input shapes) of the calls that succeeded

    @property
    def compiled(self) -> bool:
        """True while calls still go through the compiled module."""
        return self.failure is None

    def no_sync(self):
        """The wrapped DDP module's `no_sync()` context (a no-op for a module without one)."""
        inner = getattr(self.module, "no_sync", None)
        return inner() if inner is not None else contextlib.nullcontext()

    def _give_up(self, exc: BaseException) -> None:
        self.failure = _one_line(exc)
        logger.warning(
            "--compile: torch.compile failed (%s); continuing in eager mode, which gives the same "
            "results more slowly (drop --compile to silence this)",
            self.failure,
        )

    def _signature(self, args, kwargs) -> tuple:
        shapes = tuple(
            (type(a).__name__, tuple(a.shape) if isinstance(a, torch.Tensor) else None)
            for a in (*args, *kwargs.values())
        )
        return self.training, shapes

    def _compile_backward(self, out) -> None:
        """Run the backward of a new graph once, now: AOTAutograd compiles the backward lazily,
        at its first call, so a backward that does not compile would otherwise fail later, in
        the training loop's `loss.backward()`, past this wrapper (and with `compiled` still
        True). The gradients go nowhere (`autograd.grad` accumulates no `.grad`, so no DDP
        all-reduce either) and the graph is kept for the real backward; it costs one backward
        per new input signature."""
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not outputs or not params or not torch.is_grad_enabled():
            return
        torch.autograd.grad(
            outputs,
            params,
            grad_outputs=[torch.zeros_like(t) for t in outputs],
            retain_graph=True,
            allow_unused=True,
        )

    def forward(self, *args, **kwargs):
        if self.failure is None:
            signature = self._signature(args, kwargs)
            saved = None
            if signature not in self._seen:
                saved = {k: b.detach().clone() for k, b in self.module.named_buffers()}
            try:
                out = self._compiled(*args, **kwargs)
                if saved is not None:
                    self._compile_backward(out)
            except Exception as exc:
                if saved is not None:
                    with torch.no_grad():
                        for k, b in self.module.named_buffers():
                            b.copy_(saved[k])
                self._give_up(exc)
            else:
                self._seen.add(signature)
                return out
        return self.module(*args, **kwargs)


def maybe_compile(module: nn.Module, enabled: bool, **compile_kwargs) -> nn.Module:
    """`module` itself, or a `CompiledWithFallback` of it when `enabled`."""
    return CompiledWithFallback(module, **compile_kwargs) if enabled else module
