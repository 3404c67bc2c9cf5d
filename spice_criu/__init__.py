# SPDX-License-Identifier: MIT
"""spice-criu: CRIU-compatible checkpoint/restore that installs process state directly."""

__version__ = "0.1.0"
# The CRIU release whose images, CLI and RPC this version speaks.
CRIU_VERSION = (4, 2, 1)
