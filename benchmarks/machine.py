"""What the benchmarks print about the machine they ran on (imported by the scripts beside it)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_description() -> str:
    """The CPU model and its bf16 hardware, from /proc/cpuinfo on Linux (else what platform knows)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in info]
    return f"{name or platform.machine()} ({', '.join(flags) or 'no bf16 hardware'})"
