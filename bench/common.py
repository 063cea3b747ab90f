"""Measurement helpers every bench script shares (extract.py, gpu.py, fullsize*.py import this; it imports none).

Kept apart so that the scripts form no import circle (tests/test_layers.py checks it).
"""

from __future__ import annotations

import os
import platform

import torch

#: ViT-B/16 forward at 224: 17.6 GMAC per image (timm / fvcore count), 2 FLOP per MAC.
VIT_B_GFLOP = 35.2
#: Dense (no sparsity) datasheet peaks in TFLOP/s: (bf16, tf32, fp32), matched on the device name.
DATASHEET = {
    "H200": (989.4, 494.7, 66.9),
    "H100 PCIe": (756.5, 378.0, 51.2),
    "H100": (989.4, 494.7, 66.9),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.1, 183.0, 91.6),
}


def status_mib(key: str) -> float:
    """A /proc/self/status figure. Peak RSS is VmHWM, not ru_maxrss: Linux carries ru_maxrss across the exec
    of a spawned child (it would report this parent's peak); VmHWM belongs to the new address space."""
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(f"{key}:"))
    return int(line.split()[1]) / 1024


def cpu_machine() -> str:
    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"
