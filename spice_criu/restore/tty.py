# SPDX-License-Identifier: MIT
"""Terminals (TTY files of files.img): planners are added here; until then TTY fds stay refused up front."""
