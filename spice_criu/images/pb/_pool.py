# SPDX-License-Identifier: MIT
"""A descriptor pool private to spice, so its CRIU schemas never clash with pycriu's."""

from google.protobuf import descriptor_pb2, descriptor_pool

POOL = descriptor_pool.DescriptorPool()
# opts.proto imports descriptor.proto to declare the (criu) field option
POOL.AddSerializedFile(descriptor_pb2.DESCRIPTOR.serialized_pb)
