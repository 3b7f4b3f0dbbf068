from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssembleRequest(_message.Message):
    __slots__ = ("request_id", "candidates_uri", "scores_uri", "output_prefix", "preference")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_URI_FIELD_NUMBER: _ClassVar[int]
    SCORES_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidates_uri: str
    scores_uri: str
    output_prefix: str
    preference: _common_pb2.Settings
    def __init__(self, request_id: _Optional[str] = ..., candidates_uri: _Optional[str] = ..., scores_uri: _Optional[str] = ..., output_prefix: _Optional[str] = ..., preference: _Optional[_Union[_common_pb2.Settings, _Mapping]] = ...) -> None: ...

class AssembleResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
