"""What the benchmark measures besides time: peak memory, and where the numbers come from.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the process's peak
resident set size (``VmHWM``, reset before each phase through ``/proc/self/clear_refs`` after
``malloc_trim`` has returned freed heap pages), reported both absolute (data set, libraries and
all) and above the resident size when the phase started (the phase's own working set).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
import resource
from pathlib import Path
from typing import Any

import pyro
import torch

__all__ = ["PeakMemory", "environment", "sync"]


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._status = Path("/proc/self/status")
        self._resettable = device.type != "cuda" and _can_reset_rss()
        self.method = (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "VmHWM (peak RSS, reset per phase)"
            if self._resettable
            else "ru_maxrss (peak RSS of the whole process, not reset per phase)"
        )
        self.start_mib = 0.0

    def reset(self) -> None:
        """Start a phase: forget the previous peak and remember the current footprint."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            _trim_heap()  # give freed heap pages back, so RSS counts live memory only
            if self._resettable:
                Path("/proc/self/clear_refs").write_text("5")
            self.start_mib = self._rss_mib()

    def peak(self) -> dict[str, float]:
        """``{"peak_mib": …, "above_start_mib": …}`` since the last :meth:`reset`."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._resettable:
            peak = _proc_status_kib(self._status, "VmHWM") / 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"peak_mib": round(peak, 1), "above_start_mib": round(peak - self.start_mib, 1)}

    def _rss_mib(self) -> float:
        if self._status.exists():
            return _proc_status_kib(self._status, "VmRSS") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_kib(path: Path, key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", path.read_text(), re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def _trim_heap() -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:  # pragma: no cover - not glibc
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _can_reset_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return Path("/proc/self/status").exists()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so a JSON file says where its numbers come from."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor()
