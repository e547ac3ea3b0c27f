"""What a live run tells its onlookers: a heartbeat, the devices' load, and its state.

A ``Monitor`` thread, started by the run, writes every ``interval`` seconds on its own
connection: the heartbeat (so a dashboard can tell a live run from a crashed one) and one
sample per device (GPU utilisation and memory through nvidia-ml-py when installed, memory
through torch when that is all there is; the process's CPU % and resident memory always).
``run_state`` turns what the store holds into running / paused / finished / crashed.

No torch import here: torch is only asked about when the run has already imported it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

from .store import ProcessInfo, Store

STALE_AFTER = 15.0  # seconds without a heartbeat before a run on another host counts as gone


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def run_state(info: ProcessInfo | None, now: float | None = None) -> str:
    """running, paused, finished, failed, crashed, or "not started"."""
    if info is None or info.started is None:
        return "not started"
    if info.finished is not None:
        return info.state or "finished"
    now = time.time() if now is None else now
    if info.host == socket.gethostname() and info.pid:
        alive = pid_alive(info.pid)
    else:
        alive = info.heartbeat is not None and now - info.heartbeat < STALE_AFTER
    if not alive:
        return "crashed"
    return info.state or "running"


class _CpuClock:
    def __init__(self):
        self.last = (time.monotonic(), sum(os.times()[:2]))

    def percent(self) -> float:
        now = (time.monotonic(), sum(os.times()[:2]))
        wall, cpu = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        return 100.0 * cpu / wall if wall > 0 else 0.0


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _memory_total() -> float | None:
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return None


def gpu_samples() -> list[tuple[str, float | None, float | None, float | None]]:
    """(name, util %, memory used, memory total) per GPU; empty without one."""
    try:
        import pynvml  # nvidia-ml-py, the optional "gpu" extra

        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append((f"gpu{i} {name}", float(util), float(mem.used), float(mem.total)))
        return out
    except Exception:  # noqa: BLE001 - not installed, no driver, no GPU: try torch
        pass
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append((f"gpu{i} {torch.cuda.get_device_name(i)}", None, float(total - free), float(total)))
    return out


class Monitor:
    """Heartbeat and device samples from a daemon thread, on its own store connection."""

    def __init__(self, db_path: str | Path, interval: float = 2.0):
        self.db_path = Path(db_path)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dpo-engine-monitor", daemon=True)
        self._cpu = _CpuClock()
        self._total = _memory_total()

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        store = Store(self.db_path)
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                # One sample per interval, and a last one at the end: a short run has one too.
                store.heartbeat()
                store.add_device_samples([("cpu", self._cpu.percent(), _rss_bytes(), self._total),
                                          *gpu_samples()])
                if stopping:
                    return
        finally:
            store.close()


def identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()
