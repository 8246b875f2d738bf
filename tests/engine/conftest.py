"""Kernel paths never skip silently: the run ends with which CPU kernel libraries it tested and which not, why."""

from __future__ import annotations

import pytest

from motif.engine import kernels


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = []
    for path in ("avx512", "avx2"):
        if kernels.load_kernel(path) is not None:
            lines.append(f"{path}: tested")
        else:
            lines.append(f"{path}: NOT TESTED ({kernels.kernel_error(path) or 'unavailable'})")
    lines.append("torch (ARM64, CPUs without AVX2): the fp32 tests cover its ops; ARM64 itself untested here")
    terminalreporter.write_sep("-", "CPU kernel paths")
    for line in lines:
        terminalreporter.write_line(line)
