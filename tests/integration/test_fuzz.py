"""A reflection-driven fuzzer: malformed requests to every RPC of the five services on loopback.

The services are asked for their own API by gRPC reflection; for every method a fixed, seeded set of
requests is built field by field from the descriptors (empty, huge, NUL-laden and traversal strings,
out-of-range and non-finite numbers, unknown enum values, nested messages at random). No answer may be
UNKNOWN or INTERNAL, no service may log a traceback, and every service must still be SERVING afterwards.
"""

from __future__ import annotations

import collections
import math
import random

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.integration.conftest import ORDER

#: Requests per method; 29 methods make about 600 requests.
PER_METHOD = 20
#: Answers that mean the server, not the request, is at fault.
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
STRINGS = [
    "",
    " ",
    "x" * 300,
    "a\x00b",
    "../../etc/passwd",
    "file:///etc/passwd",
    "s3://elsewhere/x",
    "loops/x/../y",
    ".hidden/x",
    "é" * 20,
    "loops",
    "\n\t",
    "models/../../etc",
    "%s%n{}",
    "a" * 5000,
]
INTEGERS = [0, -1, 1, 7, 2**31 - 1, -(2**31), 10**9]
FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 0.5, 1e308]
_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor, rng: random.Random):
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return rng.choice(STRINGS).encode()
        return rng.choice(STRINGS)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return rng.choice(FLOATS)
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    low, high = _RANGES[cpp]
    return min(max(rng.choice([*INTEGERS, low, high]), low), high)


def fuzz(message, rng: random.Random, depth: int = 0):
    """Fill ``message`` at random from its descriptor (every field set with some probability)."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        if field.message_type is not None:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            if field.is_repeated:
                for _ in range(rng.randint(0, 2)):
                    fuzz(getattr(message, field.name).add(), rng, depth + 1)
            else:
                fuzz(getattr(message, field.name), rng, depth + 1)
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend(_scalar(field, rng) for _ in range(rng.randint(0, 3)))
        else:
            setattr(message, field.name, _scalar(field, rng))
    return message


def keep_loops_from_running(request) -> None:
    """A StartLoop whose config happened to be valid would start a real loop on the demo models: its student is
    always a folder that does not exist (the controller must still answer with a proper code)."""
    if request.DESCRIPTOR.name == "StartLoopRequest":
        request.spec.config.models.student = "/fuzz/no-such-student"


@pytest.fixture(scope="module")
def api(services):
    """Every service's methods, found by reflection: (service, address, method descriptor, request class)."""
    methods = []
    for name in ORDER:
        address = f"127.0.0.1:{services['ports'][name]}"
        channel = grpc.insecure_channel(address)
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        for service_name in database.get_services():
            if service_name.startswith("grpc.reflection"):
                continue
            service = pool.FindServiceByName(service_name)
            for method in service.methods:
                request_class = message_factory.GetMessageClass(method.input_type)
                response_class = message_factory.GetMessageClass(method.output_type)
                methods.append((name, channel, service_name, method, request_class, response_class))
    return methods


def test_malformed_requests_never_get_a_server_fault(services, api):
    rng = random.Random(0)
    outcomes: collections.Counter = collections.Counter()
    faults = []
    seen_services = {service for service, *_ in api}
    assert seen_services == set(ORDER) and len(api) >= 25, sorted({m.full_name for *_, m, _, _ in api})
    for _service, channel, service_name, method, request_class, response_class in api:
        path = f"/{service_name}/{method.name}"
        for _ in range(PER_METHOD):
            request = fuzz(request_class(), rng)
            keep_loops_from_running(request)
            kwargs = {
                "request_serializer": request_class.SerializeToString,
                "response_deserializer": response_class.FromString,
            }
            try:
                if method.server_streaming:
                    call = channel.unary_stream(path, **kwargs)(request, timeout=20)
                    next(iter(call), None)
                    call.cancel()
                    code = grpc.StatusCode.OK
                else:
                    channel.unary_unary(path, **kwargs)(request, timeout=60)
                    code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
                if code in SERVER_FAULTS:
                    faults.append((path, code.name, err.details()[:200], str(request)[:300]))
            outcomes[code.name] += 1
    total = sum(outcomes.values())
    print(f"fuzz: {total} requests to {len(api)} methods: {dict(outcomes)}")
    assert total >= 500
    assert faults == [], sorted({(p, c, d[:120]) for p, c, d, _ in faults})[:10]
    for name in ORDER:  # every service still serves ...
        with grpc.insecure_channel(f"127.0.0.1:{services['ports'][name]}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    for log in services["logs"].glob("*.log"):  # ... and none logged a traceback
        assert "Traceback" not in log.read_text(errors="replace"), log.name
