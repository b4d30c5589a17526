"""Test examples split over local devices.

Test examples are independent in the model (no pooling across them), so the SVI fit and the
posterior roll-outs can put each device in charge of its own test examples: the arrays with a
``test_example`` axis are placed with a :class:`jax.sharding.NamedSharding` over a one-axis mesh
and the jitted programs run unchanged (XLA propagates the split). With JAX's partitionable
random numbers the draws are the same numbers as on one device (tested on 4 CPU devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: split the ``test_example`` axis of fits and roll-outs over the local devices (GPUs, or CPU devices set up
#: with ``XLA_FLAGS=--xla_force_host_platform_device_count=K``) when there are several and they
#: divide the number of test examples; False keeps everything on one device.
SHARD_TESTS = True


def device_mesh(n_tests: int) -> Mesh | None:
    """A one-axis device mesh ``("test_example",)`` over the local devices, or None (one device,
    sharding off, or a device count that does not divide ``n_tests``: then nothing is split)."""
    devices = jax.local_devices()
    if not SHARD_TESTS or len(devices) < 2 or n_tests % len(devices):
        return None
    return Mesh(np.array(devices), ("test_example",))


def placed(x: np.ndarray | Array | None, mesh: Mesh | None, axis: int | None) -> Array | None:
    """``x`` on the device(s): split along ``axis`` over ``mesh`` (test examples are independent,
    so every device rolls out its own), or whole on the default device."""
    if x is None:
        return None
    if mesh is None or axis is None:
        return jnp.asarray(x)
    spec = [None] * np.ndim(x)
    spec[axis] = "test_example"
    return jax.device_put(jnp.asarray(x), NamedSharding(mesh, PartitionSpec(*spec)))
