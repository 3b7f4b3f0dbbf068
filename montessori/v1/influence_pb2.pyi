from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfluenceSettings(_message.Message):
    __slots__ = ("optimizer", "centring", "sgd_learning_rate", "mode", "projection_dim", "projection_seed", "cache_projection", "candidate_batch_size", "audit_size", "min_agreement", "min_pair_agreement", "reference_size", "reference_batch_size", "reference_averaging", "max_length", "device", "checkpoint_every", "compute_dtype")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    CENTRING_FIELD_NUMBER: _ClassVar[int]
    SGD_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_DIM_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_SEED_FIELD_NUMBER: _ClassVar[int]
    CACHE_PROJECTION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_PAIR_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_AVERAGING_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    centring: str
    sgd_learning_rate: float
    mode: str
    projection_dim: int
    projection_seed: int
    cache_projection: bool
    candidate_batch_size: int
    audit_size: int
    min_agreement: float
    min_pair_agreement: float
    reference_size: int
    reference_batch_size: int
    reference_averaging: str
    max_length: int
    device: str
    checkpoint_every: int
    compute_dtype: str
    def __init__(self, optimizer: _Optional[str] = ..., centring: _Optional[str] = ..., sgd_learning_rate: _Optional[float] = ..., mode: _Optional[str] = ..., projection_dim: _Optional[int] = ..., projection_seed: _Optional[int] = ..., cache_projection: _Optional[bool] = ..., candidate_batch_size: _Optional[int] = ..., audit_size: _Optional[int] = ..., min_agreement: _Optional[float] = ..., min_pair_agreement: _Optional[float] = ..., reference_size: _Optional[int] = ..., reference_batch_size: _Optional[int] = ..., reference_averaging: _Optional[str] = ..., max_length: _Optional[int] = ..., device: _Optional[str] = ..., checkpoint_every: _Optional[int] = ..., compute_dtype: _Optional[str] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("index", "count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "student", "reference", "candidates", "output_prefix", "influence", "shard", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    INFLUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    student: _common_pb2.ModelSpec
    reference: _common_pb2.ArtifactRef
    candidates: _common_pb2.ArtifactRef
    output_prefix: str
    influence: InfluenceSettings
    shard: Shard
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., student: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., reference: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., candidates: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., influence: _Optional[_Union[InfluenceSettings, _Mapping]] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("request_id", "model", "rows", "limit", "batch_size", "output_prefix", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelSpec
    rows: _common_pb2.ArtifactRef
    limit: int
    batch_size: int
    output_prefix: str
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., rows: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., limit: _Optional[int] = ..., batch_size: _Optional[int] = ..., output_prefix: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class MergeScoresRequest(_message.Message):
    __slots__ = ("request_id", "candidates", "shards", "output_prefix", "influence")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    INFLUENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidates: _common_pb2.ArtifactRef
    shards: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    output_prefix: str
    influence: InfluenceSettings
    def __init__(self, request_id: _Optional[str] = ..., candidates: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., shards: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., output_prefix: _Optional[str] = ..., influence: _Optional[_Union[InfluenceSettings, _Mapping]] = ...) -> None: ...

class MergeScoresResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
