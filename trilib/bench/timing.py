"""Timing done once for the whole suite: interleaved rounds, medians, CUDA events on a GPU, and
the machine's name for the record."""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["cuda_graph", "device_name", "measure", "median_times"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call: CUDA events on a GPU, ``perf_counter`` elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
            repeats: int = 7, warmup: int = 2, hot: bool = True) -> dict[str, list[float]]:
    """Interleaved timings: ``warmup`` untimed rounds, then ``repeats`` rounds that call every
    function once each (in a rotating order), so machine noise hits all of them alike. With
    ``hot``, each timed call comes right after an untimed call of the same function, so no
    method pays for the caches and freed memory that the previous (different) one left behind.
    As :mod:`timeit` does, the cyclic garbage collector is off during the timed rounds.

    Returns:
        ``{name: [seconds per call, ...]}`` with ``repeats`` entries each.

    Example:
        >>> times = measure({"a": lambda: sum(range(100))}, repeats=3, warmup=1)
        >>> len(times["a"])
        3
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, "
                         f"warmup={warmup}")
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    # Like timeit: CPython's cyclic garbage collector is off while timing, so a full collection
    # of the heap (a deep model is hundreds of thousands of objects) lands on no one's clock.
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                if hot:
                    fns[name]()
                times[name].append(_time_once(fns[name], device))
    finally:
        if enabled:
            gc.enable()
    return times


def median_times(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
                 repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved by :func:`measure`.

    Example:
        >>> t = median_times({"a": lambda: sum(range(100)), "b": lambda: sum(range(1000))}, repeats=3)
        >>> sorted(t)
        ['a', 'b']
    """
    return {name: statistics.median(t) for name, t in measure(fns, device, repeats, warmup).items()}


def cuda_graph(fn: Callable[[], object], device: torch.device | str, warmup: int = 3) -> Callable[[], object]:
    """``fn`` captured once in a :class:`torch.cuda.CUDAGraph`; returns a function that replays
    the graph and returns the output tensors of the capture (refreshed by each replay).

    ``fn`` must read only tensors that stay where they are (a system built once) and must not
    synchronise with the host (no ``.item()``, ``.tolist()``, ``bool(tensor)``): capture raises
    otherwise. As PyTorch's documentation asks, ``fn`` runs ``warmup`` times on a side stream
    before the capture.

    Raises:
        ValueError: ``device`` is not a CUDA device (CUDA graphs exist only there).
        RuntimeError: ``fn`` synchronises with the host (found before capturing, by
            ``torch.cuda.set_sync_debug_mode("error")``), or the capture failed.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"cuda_graph: CUDA graphs need a CUDA device, got device {device.type!r}; "
                         f"time on CPU without them")
    # A host synchronisation inside a capture can leave the CUDA context unusable; PyTorch's
    # sync debug mode turns it into a clean RuntimeError on an ordinary call first.
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


def device_name(device: torch.device | str) -> str:
    """A human name for the machine: the GPU's name, or the CPU model (``lscpu``'s)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
