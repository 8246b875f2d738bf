"""What the machine can do and what a run costs: timings, bandwidth, FLOP/s, memory, cold start."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of repeats calls (after none: callers warm up themselves), and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure_bandwidth(n_bytes: int) -> float:
    """Read bandwidth in bytes/s: summing a float32 tensor far larger than the caches, best of 10 (a floor
    wants what the machine can do, not what a neighbour's process left of it)."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    best = min(timed(lambda: x.sum(), 1)[0] for _ in range(10))
    return n_bytes / best


def measure_matmul_flops(n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matmul in dtype, best of 5."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b, 1)[0] for _ in range(5))
    return 2 * n**3 / best


def peak_rss_gb() -> float:
    """Peak resident set size since the last reset_peak_rss (VmHWM), in GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart VmHWM from the current RSS


def rss_parts_gb() -> dict[str, float]:
    """Current RSS split into anonymous memory and file-backed pages (mmapped safetensors count here)."""
    parts = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[f"rss_{line[3:7].lower()}_gb"] = int(line.split()[1]) * 1024 / 1e9
    return parts


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def server_cold_start(settings_env: dict[str, str], timeout: float = 60.0) -> float | None:
    """Seconds from `uvicorn` launch to the first answer of GET /api/health (None if it never answers)."""
    start = time.perf_counter()
    process, port = start_server(settings_env)
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                return None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status < 500:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        return None
    finally:
        stop_server(process, timeout=10)


def start_server(settings_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """A Motif API under uvicorn on a free loopback port, with `settings_env` over this environment."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "motif.service.api.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **settings_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, port


def stop_server(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


CPU_FEATURES = {  # what the table prints -> /proc/cpuinfo flags that must all be present
    "AVX2+FMA": ("avx2", "fma"),
    "AVX-512": ("avx512f", "avx512bw", "avx512vl"),
    "AVX512-VNNI": ("avx512_vnni",),
    "AVX-VNNI": ("avx_vnni",),
    "AVX512-BF16": ("avx512_bf16",),
    "AMX": ("amx_tile", "amx_int8", "amx_bf16"),
}


def cpu_features() -> dict[str, bool]:
    """The instruction sets Motif's paths care about, from /proc/cpuinfo's flags (all False off Linux x86)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    return {name: all(f in flags for f in needed) for name, needed in CPU_FEATURES.items()}
