"""During a graceful stop the standard health service says NOT_SERVING before grpc stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualflow.gateway.server import Platform, ServerConfig


async def test_health_turns_not_serving_while_draining(tmp_path: Path) -> None:
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "l.db"), grace_s=5))
    await platform.start()
    async with grpc.aio.insecure_channel(platform.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        before = await stub.Check(health_pb2.HealthCheckRequest(service="dualflow.v1.Ledger"))
        stopping = asyncio.create_task(platform.stop())
        # The drain keeps grpc up for a quiet period; health must already say NOT_SERVING in it.
        await asyncio.sleep(0.02)
        during = await stub.Check(health_pb2.HealthCheckRequest(service="dualflow.v1.Ledger"), timeout=2)
        await stopping
    assert before.status == health_pb2.HealthCheckResponse.SERVING
    assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
