# SPDX-License-Identifier: MIT
"""CPU-architecture specifics (x86_64 only): register and FPU/xsave layouts."""
