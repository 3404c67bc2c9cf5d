# SPDX-License-Identifier: MIT
"""Generated protobuf modules for CRIU's images (see images/gen.py; do not edit)."""
