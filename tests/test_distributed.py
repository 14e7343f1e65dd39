"""distributed in one process (several processes: tests/test_multihost.py): writer, mesh sizes, placement."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stargal_jax import distributed


def test_one_process_writes_and_meshes_divide_the_axis():
  assert distributed.is_writer() and not distributed.is_multiprocess()
  distributed.barrier("no-op")  # one process: returns at once
  n_devices = len(jax.devices())
  for n in (1, 2, 3, 6, 8, 128):
    devices = distributed.mesh_devices(n)
    expected = max(k for k in range(1, n_devices + 1) if n % k == 0)  # the largest count dividing n
    assert len(devices) == expected and n % len(devices) == 0


def test_put_and_to_host_round_trip():
  mesh = Mesh(distributed.mesh_devices(4), ("data",))
  tree = {"x": np.arange(8.0).reshape(4, 2), "y": np.ones(3, np.int32)}
  placed = distributed.put(tree, NamedSharding(mesh, PartitionSpec()))
  back = distributed.to_host(placed)
  assert isinstance(back["x"], np.ndarray)
  np.testing.assert_array_equal(back["x"], tree["x"])
  np.testing.assert_array_equal(back["y"], tree["y"])
  sharded = distributed.put({"x": tree["x"]}, NamedSharding(mesh, PartitionSpec("data")))
  np.testing.assert_array_equal(distributed.to_host(sharded)["x"], tree["x"])
