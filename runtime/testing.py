"""Stand-ins for the fast paths a CPU cannot run, so their start-up runs there as on a GPU (TEST DOUBLES).

CUDA graphs need a GPU and a real ``torch.compile`` costs minutes on a CPU, yet the self-check rides on the warm-up
both make at construction (:mod:`.self_check`). These make that warm-up run on a CPU: :class:`StandInCapture`
"captures" each kind of call as a :class:`Replay` that runs the call (``corrupt``: and then scrambles the frames, as a
graph bound to stale addresses does), and :class:`StandInCompiledState` is what ``compile_networks`` attaches to
compiled networks (warmed up through every kind of call, then frozen) without a compiler. ``run`` and ``serve``
never use them; tests/test_self_check.py, tests/test_offline_stream.py and benchmarks/self_check_cost.py do.
:func:`counted_work` records what a runtime's construction ran (its calls and the portraits it encoded): the check's
cost, counted exactly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from personalive_trt.runtime import stream
from personalive_trt.runtime.stream import StreamRuntime, WarmUpHooks


class Replay:
    """A captured CUDA graph's stand-in: its replay runs the call; ``corrupt`` then scrambles the frames (it raises
    nothing and writes wrong data)."""

    def __init__(self, runtime, key: tuple, corrupt: bool = False) -> None:
        self.runtime, self.key, self.corrupt = runtime, key, corrupt

    def replay(self) -> None:
        self.runtime._body(self.key)
        if self.corrupt:
            self.runtime.video.copy_(self.runtime.video.flip(1))


class StandInCapture:
    """Mixed into a runtime class (before it: ``class CpuGraphs(StandInCapture, StreamRuntime)``): with ``graphs``
    its construction runs the captured path's warm-up, capture and self-check as on a GPU, each kind of call
    "captured" as a :class:`Replay`; ``corrupt = True`` replays wrong."""

    corrupt = False

    def __init__(self, networks, config=None, graphs=False, hooks=None, **options) -> None:
        self._stand_in_graphs = bool(graphs)
        super().__init__(networks, config=config, graphs=False, hooks=hooks, **options)  # a CPU refuses graphs

    def _warm_up(self, hooks: WarmUpHooks) -> None:
        self.use_graphs = self._stand_in_graphs  # the one warm-up: compiled calls first, if any, then the captures
        super()._warm_up(hooks)

    def _capture(self, key, pool):
        return Replay(self, key, self.corrupt), pool


class StandInCompiledState:
    """What ``compile_networks`` attaches to its networks: the runtime warms every kind of call up through them (the
    calls that compile), then freezes them."""

    frozen = False

    def freeze(self) -> None:
        self.frozen = True


def stand_in_compile(networks):
    """A compile step without a compiler: a view of ``networks`` with a :class:`StandInCompiledState`."""
    compiled = networks.view()
    compiled.compiled = StandInCompiledState()
    return compiled


@dataclass
class Work:
    """What :class:`StreamRuntime` calls ran: every call body (warm-up, check and replay alike) as its key and
    whether it ran through compiled networks, and every portrait encoded."""

    calls: list[tuple[tuple, bool]] = field(default_factory=list)
    portraits: list[np.ndarray] = field(default_factory=list)


@contextlib.contextmanager
def counted_work() -> Iterator[Work]:
    """Records, while inside, the :class:`Work` of every :class:`StreamRuntime` (the offline runtime's own call
    bodies are not counted)."""
    work = Work()
    body, encode = StreamRuntime._body, stream.encode_reference

    def counted_body(runtime, key):
        work.calls.append((key, runtime.nets.compiled is not None))
        return body(runtime, key)

    def counted_encode(nets, config, image, *args, **kwargs):
        work.portraits.append(image)
        return encode(nets, config, image, *args, **kwargs)

    StreamRuntime._body, stream.encode_reference = counted_body, counted_encode
    try:
        yield work
    finally:
        StreamRuntime._body, stream.encode_reference = body, encode


__all__ = ["Replay", "StandInCapture", "StandInCompiledState", "Work", "counted_work", "stand_in_compile"]
