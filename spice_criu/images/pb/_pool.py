# SPDX-License-Identifier: MIT
"""A descriptor pool private to spice, so its CRIU schemas never clash with pycriu's."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
