"""The fixed mmap threshold returns freed buffers to the system (glibc), where glibc's default keeps them."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

# A fresh process: free one 8 MiB buffer (glibc then raises its thresholds), then
# allocate and free 24 buffers of 1 MiB; print how much of them the process kept.
PROGRAM = textwrap.dedent("""
    import sys
    import numpy as np
    from vitlocal import heap

    def rss_mib():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024

    if sys.argv[1] == "fixed":
        assert heap.fix_mmap_threshold()
    buffer = np.ones(1 << 20)
    del buffer
    before = rss_mib()
    buffers = [np.ones(1 << 17) for _ in range(24)]
    del buffers
    print(rss_mib() - before)
""")


def _kept_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], check=True, capture_output=True, text=True)
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_fixed_threshold_returns_freed_buffers_that_the_default_keeps():
    assert _kept_mib("default") > 4  # glibc's dynamic threshold: freed 1 MiB buffers stay in the heap
    assert _kept_mib("fixed") < 1
