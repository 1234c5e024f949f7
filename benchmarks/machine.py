"""What the benchmarks print about the machine they ran on (imported by the scripts beside it)."""

from __future__ import annotations

import platform
from pathlib import Path

#: The CPU flags that decide the low-precision rates: bf16 and int8 (VNNI) dot products, AMX tiles.
LOW_PRECISION_FLAGS = ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """The CPU model, its family and model numbers (the generation when the name is generic, as in VMs: AMD family
    25 is Zen 3/4, 26 is Zen 5) and its bf16/int8 hardware, from /proc/cpuinfo on Linux (else what platform knows)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine()
    family = f"family {fields['cpu family']}, model {fields['model']}; " if "cpu family" in fields else ""
    flags = set(fields.get("flags", "").split())
    present = [f for f in LOW_PRECISION_FLAGS if f in flags]
    return f"{name} ({family}{', '.join(present) or 'no bf16 or int8 dot-product hardware'})"
