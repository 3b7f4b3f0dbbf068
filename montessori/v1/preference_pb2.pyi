from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreferenceSettings(_message.Message):
    __slots__ = ("min_margin", "max_pairs_per_group")
    MIN_MARGIN_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIRS_PER_GROUP_FIELD_NUMBER: _ClassVar[int]
    min_margin: float
    max_pairs_per_group: int
    def __init__(self, min_margin: _Optional[float] = ..., max_pairs_per_group: _Optional[int] = ...) -> None: ...

class AssembleRequest(_message.Message):
    __slots__ = ("request_id", "candidates", "scores", "output_prefix", "preference", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidates: _common_pb2.ArtifactRef
    scores: _common_pb2.ArtifactRef
    output_prefix: str
    preference: PreferenceSettings
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., candidates: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., scores: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., preference: _Optional[_Union[PreferenceSettings, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class AssembleResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
