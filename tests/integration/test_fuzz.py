"""A reflection-driven fuzzer: malformed requests to every RPC of the five services on loopback, served plaintext
(``--insecure``) and with mutual TLS and bearer tokens (as ``make up`` serves them).

The services are asked for their own API by gRPC reflection. For every method and seed, a sweep first gives every
field (nested messages followed) one hostile value on an otherwise plausible request (a request id, a model folder
that exists, an artifact in the store, ``validate_only``), so validation gets as far as that field; the value is the
one at index ``seed`` of the field's corpus, most hostile first. Then ``MONTESSORI_FUZZ_PER_RPC`` more requests are
built four ways in turn: one field hostile on a plausible request, one field hostile on an empty one, every field
hostile at once, and every field at random. A hostile string is taken from ``HOSTILE_STRINGS`` (NUL and other control
characters, 100,000 characters, non-BMP characters, traversal, foreign schemes), a number from its type's extremes,
bytes from ``HOSTILE_BYTES``, and a repeated field gets thousands of elements. Server reflection is fuzzed too, and
on the TLS deployment each controller method is also called without a token, with a bad one and with a read-only one,
and each worker method with another service's certificate: those answers must be exactly UNAUTHENTICATED /
PERMISSION_DENIED.

A fault is an answer of DEADLINE_EXCEEDED (a handler that hangs), UNKNOWN or INTERNAL, an answer too large for the
client to read (RESOURCE_EXHAUSTED "metadata size exceeds"), a traceback in a service log, or a service that is not
SERVING afterwards. ``MONTESSORI_FUZZ_PER_RPC`` (requests per method and seed, default 12),
``MONTESSORI_FUZZ_SEEDS`` (comma-separated, default ``0``), ``MONTESSORI_FUZZ_DEPLOYMENTS`` (default ``tls``; also
``insecure``) and
``MONTESSORI_FUZZ_REPORT`` (a JSON file the counts per status code are written to) size a larger run: docs/fuzzing.md.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cli.local_services import ORDER, WORKERS, local_credentials, start_services, stop_services
from common.auth import is_read_method
from common.transport import PLAINTEXT, ClientTransport
from tests.conftest import DATA
from tests.integration.conftest import free_ports, s3_bucket_store

#: Requests per method and seed after the sweep (47 methods with health and reflection).
PER_RPC = int(os.environ.get("MONTESSORI_FUZZ_PER_RPC", "12"))
SEEDS = tuple(int(s) for s in os.environ.get("MONTESSORI_FUZZ_SEEDS", "0").split(","))
#: ``tls`` by default: the same handlers as ``insecure`` behind the token and certificate checks, and one start of
#: the five services, not two (a start is most of the test's time).
DEPLOYMENTS = tuple(os.environ.get("MONTESSORI_FUZZ_DEPLOYMENTS", "tls").split(","))
REPORT = os.environ.get("MONTESSORI_FUZZ_REPORT", "")
#: Answers that mean the server, not the request, is at fault: a handler that hangs past the deadline, a handler
#: error no interceptor mapped (UNKNOWN) or an unexpected exception (INTERNAL).
SERVER_FAULTS = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
#: A unary answer, or a stream's first message, later than this is DEADLINE_EXCEEDED: a fault.
UNARY_TIMEOUT, STREAM_TIMEOUT = 30.0, 20.0


def unreadable(code: grpc.StatusCode, details: str) -> bool:
    """An answer the client could not read: its status text outgrew the client's metadata limit, so gRPC gave
    RESOURCE_EXHAUSTED "Stream removed" instead of the service's code and the field it named."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size exceeds" in details


#: Most hostile first: a seed's sweep gives every field the value at its index (seed modulo the corpus's length).
HOSTILE_STRINGS = (
    "a\x00b",
    "models/tiny-student\x00/x",
    "\x01\x02\x1b[31m\x7f",
    "line\nbreak",
    "x" * 100_000,
    "\U0001f600" * 1000,
    "../../etc/passwd",
    "file:///etc/passwd",
    "s3://elsewhere/x",
    "\x00",
    "\x85\x9f",
    "\r\n\t",
    "a/" * 3000,
    "é" * 300,
    "\U0010ffff\U0001f4a9/\U0001d54f",
    "\u202eevil\u200b\ufeff",
    "loops/x/../../y",
    "models/../../etc",
    "/etc/passwd",
    "/",
    ".",
    "..",
    ".hidden/x",
    "loops",
    "~/x",
    "C:\\Windows\\win.ini",
    "file://",
    "s3://",
    "http://169.254.169.254/latest/meta-data",
    "gs://bucket/key",
    "data:,x",
    "%s%n{}",
    "${jndi:ldap://x}",
    "' OR '1'='1",
    "NaN",
    "-1",
    "",
    " ",
)
HOSTILE_BYTES = (b"\x00", b"\x00" * 100_000, b"\xff\xfe\xfd", bytes(range(256)), b"")
FLOATS = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    5e-324,
    1e-45,
    -1.0,
    0.5,
    1.0,
    3.4028234663852886e38,
    1.7976931348623157e308,
    -1.7976931348623157e308,
)
_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
#: Elements a repeated field gets when its count is the hostile part.
LARGE_COUNT = 5000
#: Nested messages are followed this deep (RunConfig's settings sit at depth 3 of StartLoopRequest).
MAX_DEPTH = 4


def integers(cpp_type: int) -> tuple[int, ...]:
    low, high = _RANGES[cpp_type]
    candidates = (0, 1, -1, 2, 7, 10**9, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32, 2**53 + 1, low, high)
    return (high, low, *sorted({v for v in candidates if low < v < high}))


def corpus(field: FieldDescriptor) -> tuple:
    """The hostile values of a scalar field's type."""
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        return HOSTILE_BYTES if field.type == FieldDescriptor.TYPE_BYTES else HOSTILE_STRINGS
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return (True, False)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return FLOATS
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return (99, -1, 2**31 - 1, -(2**31), *sorted(v.number for v in field.enum_type.values))
    return integers(cpp)


@dataclass(frozen=True)
class Leaf:
    """A field reached from the request through nested messages: a scalar (set to a value), or a repeated message
    field (its element count is what is fuzzed)."""

    path: tuple[FieldDescriptor, ...]

    @property
    def name(self) -> str:
        return ".".join(f.name for f in self.path)

    @property
    def values(self) -> tuple:
        last = self.path[-1]
        if last.message_type is not None:
            return (LARGE_COUNT,)
        values = corpus(last)
        return (*([v] for v in values), "large") if last.is_repeated else values


def leaves(descriptor, depth: int = 0, seen: tuple[str, ...] = ()) -> list[Leaf]:
    found = []
    for f in descriptor.fields:
        if f.message_type is None:
            found.append(Leaf((f,)))
            continue
        if f.message_type.GetOptions().map_entry:
            continue
        if f.is_repeated:
            found.append(Leaf((f,)))
        if depth < MAX_DEPTH and f.message_type.full_name not in seen:
            inner = leaves(f.message_type, depth + 1, (*seen, descriptor.full_name))
            found += [Leaf((f, *leaf.path)) for leaf in inner]
    return found


def put(message, leaf: Leaf, value) -> None:
    """Set ``leaf`` of ``message`` to ``value`` (creating the messages on its way)."""
    *parents, last = leaf.path
    for f in parents:
        child = getattr(message, f.name)
        if f.is_repeated:
            message = child[0] if len(child) else child.add()
        else:
            child.SetInParent()
            message = child
    if last.message_type is not None:
        target = getattr(message, last.name)
        del target[:]
        for _ in range(value):
            target.add()
    elif last.is_repeated:
        target = getattr(message, last.name)
        del target[:]
        target.extend([corpus(last)[1]] * LARGE_COUNT if value == "large" else value)
    else:
        setattr(message, last.name, value)


@dataclass
class Plausible:
    """Values a request could really carry (a model folder inside the models directory, an artifact in the store):
    the base that one hostile field is put on, so validation gets as far as that field."""

    teacher: str
    student: str
    rows_uri: str
    store_uri: str
    counter: int = 0

    def string(self, name: str, parent: str) -> str | None:
        self.counter += 1
        values = {
            "request_id": f"fuzz-{self.counter}",
            "output_prefix": f"fuzz/out-{self.counter}",
            "path": self.teacher if "teacher" in parent else self.student,
            "uri": self.rows_uri,
            "teacher": self.teacher,
            "student": self.student,
            "seed_path": self.rows_uri,
            "reference_path": self.rows_uri,
            "eval_path": self.rows_uri,
            "artifacts": self.store_uri,
            "job_id": "fuzz-missing",
            "loop_id": "fuzz-missing",
            "name": "fuzz",
            "teacher_label": "fuzz",
        }
        return values.get(name)

    def fill(self, message, depth: int = 0, parent: str = ""):
        for f in message.DESCRIPTOR.fields:
            if f.message_type is not None:
                # A ModelSpec names its model by path alone (path and artifact are exclusive); shards are optional.
                if depth >= MAX_DEPTH or f.message_type.GetOptions().map_entry or f.name in ("artifact", "shard"):
                    continue
                if f.is_repeated:
                    if f.message_type.name == "ArtifactRef" and f.name != "adapters":
                        self.fill(getattr(message, f.name).add(), depth + 1, f.name)
                    continue
                self.fill(getattr(message, f.name), depth + 1, f.name)
            elif f.name == "validate_only":
                message.validate_only = True  # no job runs for a request that happens to be valid
            elif f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated:
                value = self.string(f.name, parent)
                if value is not None:
                    setattr(message, f.name, value)
        return message


def fill_at_random(message, rng: random.Random, depth: int = 0):
    """Every field set with some probability, each to a value of its corpus."""
    for f in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        if f.message_type is not None:
            if depth >= 3 or f.message_type.GetOptions().map_entry:
                continue
            if f.is_repeated:
                for _ in range(rng.randint(0, 2)):
                    fill_at_random(getattr(message, f.name).add(), rng, depth + 1)
            else:
                fill_at_random(getattr(message, f.name), rng, depth + 1)
                getattr(message, f.name).SetInParent()
        elif f.is_repeated:
            getattr(message, f.name).extend(rng.choice(corpus(f)) for _ in range(rng.randint(0, 3)))
        else:
            setattr(message, f.name, rng.choice(corpus(f)))
    return message


class Generator:
    """The requests of one method for one seed, in four modes taken in turn. The single-field modes walk the
    method's fields round-robin; the k-th visit of a field gives it the k-th value of its corpus, from an offset
    per field and seed, so every field meets every value of its corpus over enough requests."""

    MODES = ("plausible+one", "empty+one", "all", "random")

    def __init__(self, request_class, plausible: Plausible, rng: random.Random, seed: int):
        self.request_class = request_class
        self.plausible = plausible
        self.rng = rng
        self.seed = seed
        self.leaves = leaves(request_class.DESCRIPTOR)
        rng.shuffle(self.leaves)
        self.offsets = {leaf.name: rng.randrange(len(leaf.values)) for leaf in self.leaves}
        self.visits: collections.Counter = collections.Counter()
        self.turn = collections.Counter()
        self.count = 0
        #: (leaf name, value index) pairs given so far: the corpus coverage.
        self.covered: set[tuple[str, int]] = set()

    def _next_value(self, leaf: Leaf) -> tuple[int, object]:
        index = (self.offsets[leaf.name] + self.visits[leaf.name]) % len(leaf.values)
        self.visits[leaf.name] += 1
        self.covered.add((leaf.name, index))
        return index, leaf.values[index]

    def sweep(self):
        """Every field once, on the plausible request, with the value at index ``seed`` of its corpus: whatever the
        budget, each seed reaches every field, and seeds 0..N-1 give every field the first N values."""
        for leaf in self.leaves:
            index = self.seed % len(leaf.values)
            self.covered.add((leaf.name, index))
            request = self.plausible.fill(self.request_class())
            put(request, leaf, leaf.values[index])
            yield "sweep", leaf.name, request

    def next(self):
        """(mode, name of the hostile field or '*', request)."""
        mode = self.MODES[self.count % len(self.MODES)]
        self.count += 1
        if not self.leaves:  # no fields at all (ListLoops, health List): the empty request
            return mode, "-", self.request_class()
        if mode in ("plausible+one", "empty+one"):
            leaf = self.leaves[self.turn[mode] % len(self.leaves)]
            self.turn[mode] += 1
            request = self.plausible.fill(self.request_class()) if mode == "plausible+one" else self.request_class()
            _, value = self._next_value(leaf)
            put(request, leaf, value)
            return mode, leaf.name, request
        if mode == "all":
            request = self.request_class()
            for leaf in self.leaves:
                if leaf.path[-1].message_type is None:  # every scalar; counts stay small
                    put(request, leaf, self._next_value(leaf)[1])
            return mode, "*", request
        return mode, "*", fill_at_random(self.request_class(), self.rng)


def keep_loops_from_running(request) -> None:
    """A StartLoop whose config happened to be valid would start a real loop on the demo models: a student that is
    unset (the default demo student) or names an existing folder becomes one that does not exist (the controller
    must still answer with a proper code); a hostile student stays."""
    if request.DESCRIPTOR.name != "StartLoopRequest":
        return
    student = request.spec.config.models.student
    try:
        real = not student or Path(student).is_dir()
    except (ValueError, OSError):
        real = False
    if real:
        request.spec.config.models.student = "/fuzz/no-such-student"


# -- the deployments ------------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """The five services as processes, and how a client reaches each: ``transport[service]`` (the controller's
    certificate for the workers under TLS) and ``metadata`` (the write token for the controller)."""

    name: str
    ports: dict[str, int]
    logs: Path
    plausible: Plausible
    transport: dict[str, ClientTransport]
    metadata: dict[str, tuple] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    intruder: ClientTransport | None = None

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def deployment(request, tiny_models, tmp_path_factory, s3_server):
    """One deployment at a time (each is torn down before the next starts): ``insecure`` is plaintext; ``tls``
    serves as ``make up`` does, with a local CA, a certificate per service and a write and a read token."""
    name = request.param
    root = tmp_path_factory.mktemp(f"fuzz-{name}")
    store = s3_bucket_store(s3_server, root / "test-cache", f"fuzz-{uuid.uuid4().hex[:10]}")
    rows = store.put_bytes("fuzz/rows.jsonl", b"".join((DATA / "reference.jsonl").read_bytes().splitlines(True)[:4]))
    ports = dict(zip(ORDER, free_ports(len(ORDER))))
    env = {"MONTESSORI_TORCH_THREADS": "1", **s3_server.env(root / "node-cache")}
    teacher, student = (str(p) for p in tiny_models)
    plausible = Plausible(teacher=teacher, student=student, rows_uri=rows.uri, store_uri=store.root_uri)
    tls = tokens = None
    if name == "tls":
        tls, tokens = local_credentials(root / "run")
    processes = start_services(
        artifacts=store.root_uri, ports=ports, log_dir=root / "logs", env=env, tls=tls, token_file=tokens
    )
    try:
        if tls is None:
            yield Deployment(name, ports, root / "logs", plausible, dict.fromkeys(ORDER, PLAINTEXT))
        else:
            write = (root / "run" / "token").read_text().strip()
            read = (root / "run" / "token-read").read_text().strip()
            worker = ClientTransport(tls_dir=str(tls / "controller"), client_cert=True)
            yield Deployment(
                name,
                ports,
                root / "logs",
                plausible,
                {**dict.fromkeys(WORKERS, worker), "controller": ClientTransport(tls_dir=str(tls / "controller"))},
                metadata={"controller": (("authorization", f"Bearer {write}"),)},
                tokens={"write": write, "read": read},
                # Another service's certificate: signed by the same CA, but not an identity the workers accept.
                intruder=ClientTransport(tls_dir=str(tls / "teacher"), client_cert=True),
            )
    finally:
        stop_services(processes, timeout=30)


@dataclass
class Method:
    service: str
    service_name: str
    descriptor: object
    request_class: type
    response_class: type

    @property
    def path(self) -> str:
        return f"/{self.service_name}/{self.descriptor.name}"


def discover(deployment: Deployment) -> tuple[list[Method], dict[str, list[str]]]:
    """Every service's methods, found by its own reflection (the controller's with the read token: reflection is
    a read method), and the reflection services each one offers."""
    methods, reflection_services = [], {}
    for service in ORDER:
        transport = deployment.transport[service]
        if deployment.tokens and service == "controller":
            transport = ClientTransport(tls_dir=transport.tls_dir, token=deployment.tokens["read"])
        with transport.channel(deployment.address(service)) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = descriptor_pool.DescriptorPool(database)
            names = list(database.get_services())
            reflection_services[service] = [n for n in names if n.startswith("grpc.reflection")]
            for service_name in names:
                if service_name.startswith("grpc.reflection"):
                    continue
                for method in pool.FindServiceByName(service_name).methods:
                    request_class = message_factory.GetMessageClass(method.input_type)
                    response_class = message_factory.GetMessageClass(method.output_type)
                    methods.append(Method(service, service_name, method, request_class, response_class))
    return methods, reflection_services


def call(channel, method: Method, request, metadata=()) -> grpc.StatusCode:
    """One request: its status (a stream's, after its first message: the rest is cancelled)."""
    kwargs = {
        "request_serializer": method.request_class.SerializeToString,
        "response_deserializer": method.response_class.FromString,
    }
    try:
        if method.descriptor.server_streaming:
            stream = channel.unary_stream(method.path, **kwargs)(request, timeout=STREAM_TIMEOUT, metadata=metadata)
            next(iter(stream), None)
            stream.cancel()
        else:
            channel.unary_unary(method.path, **kwargs)(request, timeout=UNARY_TIMEOUT, metadata=metadata)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


class Logs:
    """The services' logs, read as they grow: a traceback is attributed to the request after which it appeared."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.glob("*.log"))
        self.offsets = {f: f.stat().st_size for f in self.files}

    def new_tracebacks(self) -> list[str]:
        found = []
        for f in self.files:
            size = f.stat().st_size
            if size != self.offsets[f]:
                with open(f, "rb") as handle:
                    handle.seek(self.offsets[f])
                    text = handle.read(size - self.offsets[f]).decode(errors="replace")
                self.offsets[f] = size
                if "Traceback" in text:  # its first lines and its last (the exception)
                    traceback = text[text.index("Traceback") :].split("\n", 1)[0]
                    found.append(f"{f.stem}: {traceback[:200]} ... {traceback[-500:]}")
        return found


@dataclass
class Tally:
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    by_method: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    faults: list = field(default_factory=list)
    tracebacks: list = field(default_factory=list)
    auth_mismatches: list = field(default_factory=list)
    #: The first answer of each code: what it looks like.
    examples: dict = field(default_factory=dict)

    def record(self, logs: Logs, path: str, label: str, code, details: str, request, expect=None) -> None:
        self.outcomes[code.name] += 1
        self.examples.setdefault(code.name, {"method": path, "field": label, "details": details[:200]})
        self.by_method[path][code.name] += 1
        if code in SERVER_FAULTS or unreadable(code, details):
            self.faults.append({"method": path, "field": label, "code": code.name, "details": details[:300]})
        if expect is not None and code not in expect:
            self.auth_mismatches.append(
                {"method": path, "credentials": label, "code": code.name, "expected": sorted(c.name for c in expect)}
            )
        for traceback in logs.new_tracebacks():
            self.tracebacks.append({"method": path, "field": label, "request": str(request)[:300], "log": traceback})


HOSTILE_HEADERS = ("Bearer", "Bearer ", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 5000, "Bearer fuzz fuzz", "bearer  ")


def fuzz_auth(deployment: Deployment, methods, generators, channels, tally: Tally, logs: Logs, rng) -> None:
    """The controller without a token, with bad ones and with the read token; the workers with another
    service's certificate. Health needs no credentials at all."""
    for method in methods:
        mode, _, request = generators[method.path].next()
        keep_loops_from_running(request)
        health = method.service_name == "grpc.health.v1.Health"
        if method.service == "controller":
            refused = {grpc.StatusCode.UNAUTHENTICATED}
            bogus = f"Bearer {uuid.UUID(int=rng.getrandbits(128)).hex}"
            for label, metadata in (
                ("no token", ()),
                ("unknown token", (("authorization", bogus),)),
                ("malformed header", (("authorization", rng.choice(HOSTILE_HEADERS)),)),
            ):
                code, details = call(channels["controller"], method, request, metadata)
                expect = None if health else refused
                tally.record(logs, method.path, label, code, details, request, expect)
            code, details = call(
                channels["controller"], method, request, (("authorization", f"Bearer {deployment.tokens['read']}"),)
            )
            if health or is_read_method(method.path):
                expect = None  # let through: the handler answers
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    tally.auth_mismatches.append({"method": method.path, "credentials": "read", "code": code.name})
            else:
                expect = {grpc.StatusCode.PERMISSION_DENIED}
            tally.record(logs, method.path, "read token", code, details, request, expect)
        else:
            code, details = call(channels["intruder"][method.service], method, request)
            expect = None if health else {grpc.StatusCode.PERMISSION_DENIED}
            tally.record(logs, method.path, "another service's certificate", code, details, request, expect)


def reflection_requests(rng: random.Random, n: int) -> list:
    """Hostile reflection queries: every kind of question, about hostile names and extension numbers."""
    requests = [reflection_pb2.ServerReflectionRequest(list_services="")]
    for i in range(n - 1):
        name = HOSTILE_STRINGS[(i + rng.randrange(len(HOSTILE_STRINGS))) % len(HOSTILE_STRINGS)]
        kind = i % 5
        if kind == 0:
            request = reflection_pb2.ServerReflectionRequest(file_by_filename=name)
        elif kind == 1:
            request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
        elif kind == 2:
            number = rng.choice(integers(FieldDescriptor.CPPTYPE_INT32))
            request = reflection_pb2.ServerReflectionRequest(
                file_containing_extension=reflection_pb2.ExtensionRequest(containing_type=name, extension_number=number)
            )
        elif kind == 3:
            request = reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type=name)
        else:
            request = reflection_pb2.ServerReflectionRequest(list_services=name)
        request.host = rng.choice(HOSTILE_STRINGS[:12])
        requests.append(request)
    return requests


def fuzz_reflection(deployment, reflection_services, channels, tally: Tally, logs: Logs, rng, n: int) -> None:
    """One two-way stream per service and reflection version, ``n`` questions each; each answer counts (an
    ``error_response`` by its code). Without a token the controller refuses reflection (UNAUTHENTICATED)."""
    for service, names in reflection_services.items():
        metadata = deployment.metadata.get(service, ())
        for service_name in names:
            module = reflection_pb2
            if service_name.startswith("grpc.reflection.v1."):
                from grpc_reflection.v1 import reflection_pb2 as module  # noqa: PLC0415 - only when offered
            path = f"/{service_name}/ServerReflectionInfo"
            requests = [
                module.ServerReflectionRequest.FromString(r.SerializeToString()) for r in reflection_requests(rng, n)
            ]
            stream = channels[service].stream_stream(
                path,
                request_serializer=module.ServerReflectionRequest.SerializeToString,
                response_deserializer=module.ServerReflectionResponse.FromString,
            )
            answered = 0
            try:
                for response in stream(iter(requests), timeout=STREAM_TIMEOUT * 3, metadata=metadata):
                    code = grpc.StatusCode.OK
                    if response.HasField("error_response"):
                        code = next(c for c in grpc.StatusCode if c.value[0] == response.error_response.error_code)
                    tally.record(
                        logs, path, "reflection", code, response.error_response.error_message, requests[answered]
                    )
                    answered += 1
            except grpc.RpcError as err:
                for request in requests[answered:]:
                    tally.record(logs, path, "reflection", err.code(), err.details() or "", request)
            if deployment.tokens and service == "controller":
                try:
                    next(iter(stream(iter(requests[:1]), timeout=STREAM_TIMEOUT)))
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as err:
                    code, details = err.code(), err.details() or ""
                expect = {grpc.StatusCode.UNAUTHENTICATED}
                tally.record(logs, path, "no token", code, details, requests[0], expect)


def test_malformed_requests_never_get_a_server_fault(deployment):
    started = time.monotonic()
    methods, reflection_services = discover(deployment)
    assert {m.service for m in methods} == set(ORDER) and len(methods) >= 40, sorted({m.path for m in methods})
    assert all(reflection_services.values()), reflection_services
    channels = {service: deployment.transport[service].channel(deployment.address(service)) for service in ORDER}
    if deployment.intruder is not None:
        channels["intruder"] = {w: deployment.intruder.channel(deployment.address(w)) for w in WORKERS}
    logs = Logs(deployment.logs)
    tally = Tally()
    coverage = {"string_fields": 0, "string_field_values": 0, "string_field_values_given": 0}
    for seed in SEEDS:
        rng = random.Random(seed)
        generators = {m.path: Generator(m.request_class, deployment.plausible, rng, seed) for m in methods}
        for method in methods:
            metadata = deployment.metadata.get(method.service, ())
            generator = generators[method.path]
            for mode, label, request in [*generator.sweep(), *(generator.next() for _ in range(PER_RPC))]:
                keep_loops_from_running(request)
                code, details = call(channels[method.service], method, request, metadata)
                tally.record(logs, method.path, f"{mode}: {label}", code, details, request)
        if deployment.tokens:
            fuzz_auth(deployment, methods, generators, channels, tally, logs, rng)
        fuzz_reflection(deployment, reflection_services, channels, tally, logs, rng, n=max(10, PER_RPC))
        for generator in generators.values():
            strings = [
                leaf
                for leaf in generator.leaves
                if leaf.path[-1].type == FieldDescriptor.TYPE_STRING and not leaf.path[-1].is_repeated
            ]
            coverage["string_fields"] += len(strings)
            coverage["string_field_values"] += len(strings) * len(HOSTILE_STRINGS)
            coverage["string_field_values_given"] += sum(
                (leaf.name, i) in generator.covered for leaf in strings for i in range(len(HOSTILE_STRINGS))
            )
    seconds = time.monotonic() - started
    for service in ORDER:  # every service still serves ...
        transport = deployment.transport[service]
        with transport.channel(deployment.address(service)) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    tally.tracebacks += [{"method": "-", "log": t} for t in logs.new_tracebacks()]  # ... and logged no traceback
    total = sum(tally.outcomes.values())
    summary = {
        "deployment": deployment.name,
        "seeds": list(SEEDS),
        "per_rpc": PER_RPC,
        "methods": len(methods),
        "requests": total,
        "seconds": round(seconds, 1),
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "by_code": dict(sorted(tally.outcomes.items())),
        "faults": len(tally.faults),
        "tracebacks": len(tally.tracebacks),
        "auth_mismatches": len(tally.auth_mismatches),
        "coverage": coverage,
        "examples": dict(sorted(tally.examples.items())),
        "fault_examples": tally.faults[:20],
        "traceback_examples": tally.tracebacks[:5],
        "auth_mismatch_examples": tally.auth_mismatches[:10],
        "by_method": {path: dict(sorted(c.items())) for path, c in sorted(tally.by_method.items())},
    }
    print(f"fuzz[{deployment.name}]: {total} requests, {seconds:.1f} s: {summary['by_code']}")
    if REPORT:
        report = Path(REPORT)
        existing = json.loads(report.read_text()) if report.is_file() else {}
        report.write_text(json.dumps({**existing, deployment.name: summary}, indent=1, sort_keys=True) + "\n")
    assert total >= len(methods) * PER_RPC * len(SEEDS)
    assert tally.faults == [], sorted({(f["method"], f["code"], f["field"], f["details"][:120]) for f in tally.faults})[
        :10
    ]
    assert tally.tracebacks == [], tally.tracebacks[:3]
    assert tally.auth_mismatches == [], tally.auth_mismatches[:10]
