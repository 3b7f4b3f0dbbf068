from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoopState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOOP_STATE_UNSPECIFIED: _ClassVar[LoopState]
    LOOP_STATE_RUNNING: _ClassVar[LoopState]
    LOOP_STATE_SUCCEEDED: _ClassVar[LoopState]
    LOOP_STATE_FAILED: _ClassVar[LoopState]
    LOOP_STATE_STOPPED: _ClassVar[LoopState]
LOOP_STATE_UNSPECIFIED: LoopState
LOOP_STATE_RUNNING: LoopState
LOOP_STATE_SUCCEEDED: LoopState
LOOP_STATE_FAILED: LoopState
LOOP_STATE_STOPPED: LoopState

class LoopSpec(_message.Message):
    __slots__ = ("name", "teacher", "student", "seed_set", "reference_set", "eval_set", "iterations", "continuous", "max_rounds", "patience", "samples_per_prompt", "seed", "overrides", "artifact_store")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    SEED_SET_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SET_FIELD_NUMBER: _ClassVar[int]
    EVAL_SET_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_STORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    teacher: str
    student: str
    seed_set: str
    reference_set: str
    eval_set: str
    iterations: int
    continuous: bool
    max_rounds: int
    patience: int
    samples_per_prompt: int
    seed: int
    overrides: _common_pb2.Settings
    artifact_store: str
    def __init__(self, name: _Optional[str] = ..., teacher: _Optional[str] = ..., student: _Optional[str] = ..., seed_set: _Optional[str] = ..., reference_set: _Optional[str] = ..., eval_set: _Optional[str] = ..., iterations: _Optional[int] = ..., continuous: _Optional[bool] = ..., max_rounds: _Optional[int] = ..., patience: _Optional[int] = ..., samples_per_prompt: _Optional[int] = ..., seed: _Optional[int] = ..., overrides: _Optional[_Union[_common_pb2.Settings, _Mapping]] = ..., artifact_store: _Optional[str] = ...) -> None: ...

class Loop(_message.Message):
    __slots__ = ("loop_id", "state", "iteration", "stage", "rounds_completed", "error_message", "summary", "age_seconds", "store_uri")
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORE_URI_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    state: LoopState
    iteration: int
    stage: str
    rounds_completed: int
    error_message: str
    summary: _common_pb2.ArtifactRef
    age_seconds: float
    store_uri: str
    def __init__(self, loop_id: _Optional[str] = ..., state: _Optional[_Union[LoopState, str]] = ..., iteration: _Optional[int] = ..., stage: _Optional[str] = ..., rounds_completed: _Optional[int] = ..., error_message: _Optional[str] = ..., summary: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., age_seconds: _Optional[float] = ..., store_uri: _Optional[str] = ...) -> None: ...

class LoopEvent(_message.Message):
    __slots__ = ("sequence", "kind", "iteration", "stage", "progress", "metrics", "loop")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: str
    iteration: int
    stage: str
    progress: _common_pb2.Progress
    metrics: _containers.ScalarMap[str, float]
    loop: Loop
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[str] = ..., iteration: _Optional[int] = ..., stage: _Optional[str] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., loop: _Optional[_Union[Loop, _Mapping]] = ...) -> None: ...

class StartLoopRequest(_message.Message):
    __slots__ = ("request_id", "spec")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: LoopSpec
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[LoopSpec, _Mapping]] = ...) -> None: ...

class StartLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: Loop
    def __init__(self, loop: _Optional[_Union[Loop, _Mapping]] = ...) -> None: ...

class GetLoopRequest(_message.Message):
    __slots__ = ("loop_id",)
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    def __init__(self, loop_id: _Optional[str] = ...) -> None: ...

class GetLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: Loop
    def __init__(self, loop: _Optional[_Union[Loop, _Mapping]] = ...) -> None: ...

class ListLoopsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLoopsResponse(_message.Message):
    __slots__ = ("loops",)
    LOOPS_FIELD_NUMBER: _ClassVar[int]
    loops: _containers.RepeatedCompositeFieldContainer[Loop]
    def __init__(self, loops: _Optional[_Iterable[_Union[Loop, _Mapping]]] = ...) -> None: ...

class StopLoopRequest(_message.Message):
    __slots__ = ("loop_id",)
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    def __init__(self, loop_id: _Optional[str] = ...) -> None: ...

class StopLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: Loop
    def __init__(self, loop: _Optional[_Union[Loop, _Mapping]] = ...) -> None: ...

class WatchLoopRequest(_message.Message):
    __slots__ = ("loop_id",)
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    def __init__(self, loop_id: _Optional[str] = ...) -> None: ...

class WatchLoopResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: LoopEvent
    def __init__(self, event: _Optional[_Union[LoopEvent, _Mapping]] = ...) -> None: ...
