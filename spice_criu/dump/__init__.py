# SPDX-License-Identifier: MIT
"""Checkpoint: seize the tree, collect per-object state, write the images (see run.py)."""
