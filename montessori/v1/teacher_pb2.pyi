from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "teacher", "teacher_label", "seed_set_uri", "output_prefix", "num_prompts", "target_examples", "seed", "synthesis")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    TEACHER_LABEL_FIELD_NUMBER: _ClassVar[int]
    SEED_SET_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SYNTHESIS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    teacher: _common_pb2.ModelSpec
    teacher_label: str
    seed_set_uri: str
    output_prefix: str
    num_prompts: int
    target_examples: int
    seed: int
    synthesis: _common_pb2.Settings
    def __init__(self, request_id: _Optional[str] = ..., teacher: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., teacher_label: _Optional[str] = ..., seed_set_uri: _Optional[str] = ..., output_prefix: _Optional[str] = ..., num_prompts: _Optional[int] = ..., target_examples: _Optional[int] = ..., seed: _Optional[int] = ..., synthesis: _Optional[_Union[_common_pb2.Settings, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
