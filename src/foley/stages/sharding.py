"""Fully sharded data parallel (torch FSDP2) for the stages, under Lightning's ``ModelParallelStrategy``.

Lightning calls a LightningModule's ``configure_model`` with ``self.device_mesh`` set when it runs
the ``ModelParallelStrategy``; a stage then shards its trained networks with :func:`shard_networks`
and keeps their buffers equal on every rank with :func:`broadcast_buffers`. Lightning's older
``FSDPStrategy`` (FSDP1) is not used: it refuses CPU accelerators, and its flat parameters would
pair a network's shard with a different part of the EMA copy (docs/scaling.md).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = ["broadcast_buffers", "data_parallel_mesh", "shard_networks"]


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The data-parallel dimension of a ``ModelParallelStrategy`` mesh (tensor parallelism must be off)."""
    tensor_parallel = mesh["tensor_parallel"].size()
    if tensor_parallel != 1:
        raise ValueError(
            f"foley's stages shard data-parallel only, but ModelParallelStrategy has tensor_parallel_size="
            f"{tensor_parallel}: set --trainer.strategy.init_args.tensor_parallel_size=1 and data_parallel_size "
            "to the number of processes (num_nodes x devices), see docs/scaling.md"
        )
    return mesh["data_parallel"]


def shard_networks(networks: Iterable[nn.Module | None], mesh: DeviceMesh) -> None:
    """Make each network one FSDP2 unit (``fully_shard``) over the data-parallel ``mesh``.

    Parameters, gradients and optimiser states are split across the ranks and each network's
    parameters are gathered for its forward and backward. Networks of the same architecture
    get the same layout, so an EMA copy's local shards line up with the trained network's and
    the average needs no gathering. Already sharded networks are left as they are (Lightning
    may call ``configure_model`` again).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for network in networks:
        if network is not None and not isinstance(network, FSDPModule):
            # Reshard after every forward, the root's too: FSDP2 otherwise keeps a root's gathered
            # parameters until its backward, and a network that only runs forward (the EMA, in
            # validation) would stay whole while the trained one is sharded again.
            fully_shard(network, mesh=mesh, reshard_after_forward=True)


def broadcast_buffers(networks: Iterable[nn.Module | None], mesh: DeviceMesh) -> None:
    """Copy the buffers of ``networks`` from the mesh's first rank to all others, as DDP does
    before every forward.

    FSDP shards parameters but leaves buffers alone. Buffers that training updates (the MM-DiT's
    ``FeatureStandardizer`` statistics) would otherwise drift apart: each rank would train a
    slightly different model from the one checkpointed (rank 0's) and from the same run under DDP.
    """
    group = mesh.get_group()
    source = torch.distributed.get_global_rank(group, 0)
    for network in networks:
        for buffer in network.buffers() if network is not None else ():
            torch.distributed.broadcast(buffer, src=source, group=group)
