"""Drive the dynamic provider the way Pulumi's engine does, without the Pulumi CLI.

The engine starts ``python -m pulumi.dynamic`` (a gRPC ResourceProvider server that prints
its port) and calls Configure, Check, Diff, Create, Read, Update and Delete on it, with
properties as protobuf Structs and the pickled provider in ``__provider``. ``make demo``
uses this where the CLI is missing, and the tests use it to exercise the real server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2
from pulumi.dynamic import ResourceProvider
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from pulumi_leap0.provider import SandboxProvider
from pulumi_leap0.resource import SANDBOX_TYPE

PROVIDER_KEY = "__provider"


def to_struct(props: dict[str, Any]) -> struct_pb2.Struct:
    return asyncio.run(rpc.serialize_properties(props, {}))


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return dict(rpc.deserialize_properties(struct, keep_unknowns=True))


@dataclass
class Diff:
    changes: bool
    replaces: list[str]
    delete_before_replace: bool


class ProviderProcess:
    """One ``python -m pulumi.dynamic`` server and a gRPC channel to it."""

    urn = f"urn:pulumi:dev::leap0::{SANDBOX_TYPE}::sandbox"

    def __init__(self, env: dict[str, str] | None = None,
                 provider: ResourceProvider | None = None, urn: str | None = None) -> None:
        """``provider``: the one pickled into every call's ``__provider`` (a sandbox's by
        default), as the engine takes it from each resource's state, for ``urn``."""
        self.provider = serialize_provider(provider or SandboxProvider())
        if urn is not None:
            self.urn = urn
        self._process = subprocess.Popen(
            [sys.executable, "-u", "-m", "pulumi.dynamic"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
        )
        assert self._process.stdout is not None
        port = self._process.stdout.readline().strip()
        if not port.isdigit():
            self.close()
            raise RuntimeError(f"pulumi.dynamic did not print its port: {port!r}")
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self._channel)

    def close(self) -> None:
        if hasattr(self, "_channel"):
            self._channel.close()
        self._process.kill()
        self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ProviderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_provider(self, props: dict[str, Any]) -> struct_pb2.Struct:
        return to_struct({**props, PROVIDER_KEY: props.get(PROVIDER_KEY, self.provider)})

    def configure(self, config: dict[str, str]) -> None:
        self.stub.Configure(provider_pb2.ConfigureRequest(args=to_struct(config)))

    def check(
        self, news: dict[str, Any], olds: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        response = self.stub.Check(
            provider_pb2.CheckRequest(
                urn=self.urn, olds=self._with_provider(olds or {}), news=self._with_provider(news)
            )
        )
        failures = [(f.property, f.reason) for f in response.failures]
        return from_struct(response.inputs), failures

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Diff:
        response = self.stub.Diff(
            provider_pb2.DiffRequest(
                id=id_, urn=self.urn, olds=self._with_provider(olds), news=self._with_provider(news)
            )
        )
        return Diff(
            changes=response.changes == provider_pb2.DiffResponse.DIFF_SOME,
            replaces=list(response.replaces),
            delete_before_replace=response.deleteBeforeReplace,
        )

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        response = self.stub.Create(
            provider_pb2.CreateRequest(urn=self.urn, properties=self._with_provider(props))
        )
        return response.id, from_struct(response.properties)

    def read(
        self, id_: str, props: dict[str, Any]
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        response = self.stub.Read(
            provider_pb2.ReadRequest(id=id_, urn=self.urn, properties=self._with_provider(props))
        )
        return response.id, from_struct(response.properties), from_struct(response.inputs)

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> dict[str, Any]:
        response = self.stub.Update(
            provider_pb2.UpdateRequest(
                id=id_, urn=self.urn, olds=self._with_provider(olds), news=self._with_provider(news)
            )
        )
        return from_struct(response.properties)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        self.stub.Delete(
            provider_pb2.DeleteRequest(id=id_, urn=self.urn, properties=self._with_provider(props))
        )
