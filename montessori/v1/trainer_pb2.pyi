from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainStudentRequest(_message.Message):
    __slots__ = ("request_id", "student", "candidates_uri", "output_prefix", "sft", "seed", "save_optimizer", "limit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SFT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAVE_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    student: _common_pb2.ModelSpec
    candidates_uri: str
    output_prefix: str
    sft: _common_pb2.Settings
    seed: int
    save_optimizer: bool
    limit: int
    def __init__(self, request_id: _Optional[str] = ..., student: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., candidates_uri: _Optional[str] = ..., output_prefix: _Optional[str] = ..., sft: _Optional[_Union[_common_pb2.Settings, _Mapping]] = ..., seed: _Optional[int] = ..., save_optimizer: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class TrainStudentResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class TrainTeacherRequest(_message.Message):
    __slots__ = ("request_id", "teacher", "pairs_uri", "output_prefix", "dpo", "seed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    PAIRS_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    teacher: _common_pb2.ModelSpec
    pairs_uri: str
    output_prefix: str
    dpo: _common_pb2.Settings
    seed: int
    def __init__(self, request_id: _Optional[str] = ..., teacher: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., pairs_uri: _Optional[str] = ..., output_prefix: _Optional[str] = ..., dpo: _Optional[_Union[_common_pb2.Settings, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class TrainTeacherResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
