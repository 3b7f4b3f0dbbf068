from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "warmup_uri", "reference_uri", "candidates_uri", "output_prefix", "influence")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WARMUP_URI_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_URI_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    INFLUENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    warmup_uri: str
    reference_uri: str
    candidates_uri: str
    output_prefix: str
    influence: _common_pb2.Settings
    def __init__(self, request_id: _Optional[str] = ..., warmup_uri: _Optional[str] = ..., reference_uri: _Optional[str] = ..., candidates_uri: _Optional[str] = ..., output_prefix: _Optional[str] = ..., influence: _Optional[_Union[_common_pb2.Settings, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("request_id", "model", "rows_uri", "limit", "batch_size", "output_prefix")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_URI_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelSpec
    rows_uri: str
    limit: int
    batch_size: int
    output_prefix: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., rows_uri: _Optional[str] = ..., limit: _Optional[int] = ..., batch_size: _Optional[int] = ..., output_prefix: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
