from montessori.v1 import common_pb2 as _common_pb2
from montessori.v1 import influence_pb2 as _influence_pb2
from montessori.v1 import preference_pb2 as _preference_pb2
from montessori.v1 import teacher_pb2 as _teacher_pb2
from montessori.v1 import trainer_pb2 as _trainer_pb2
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

class LoopEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOOP_EVENT_KIND_UNSPECIFIED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_STAGE_STARTED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_STAGE_FINISHED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_PROGRESS: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_ROUND_FINISHED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_EVALUATION_FINISHED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_LOOP_FINISHED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_LOOP_ENDED: _ClassVar[LoopEventKind]
    LOOP_EVENT_KIND_SNAPSHOT: _ClassVar[LoopEventKind]
LOOP_STATE_UNSPECIFIED: LoopState
LOOP_STATE_RUNNING: LoopState
LOOP_STATE_SUCCEEDED: LoopState
LOOP_STATE_FAILED: LoopState
LOOP_STATE_STOPPED: LoopState
LOOP_EVENT_KIND_UNSPECIFIED: LoopEventKind
LOOP_EVENT_KIND_STAGE_STARTED: LoopEventKind
LOOP_EVENT_KIND_STAGE_FINISHED: LoopEventKind
LOOP_EVENT_KIND_PROGRESS: LoopEventKind
LOOP_EVENT_KIND_ROUND_FINISHED: LoopEventKind
LOOP_EVENT_KIND_EVALUATION_FINISHED: LoopEventKind
LOOP_EVENT_KIND_LOOP_FINISHED: LoopEventKind
LOOP_EVENT_KIND_LOOP_ENDED: LoopEventKind
LOOP_EVENT_KIND_SNAPSHOT: LoopEventKind

class LoopSpec(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: RunConfig
    def __init__(self, config: _Optional[_Union[RunConfig, _Mapping]] = ...) -> None: ...

class RunConfig(_message.Message):
    __slots__ = ("name", "loop_id", "seed", "iterations", "continuous", "max_rounds", "patience", "artifacts", "models", "data", "sizes", "synthesis", "influence", "preference", "warmup", "dpo", "sft", "evaluation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    SYNTHESIS_FIELD_NUMBER: _ClassVar[int]
    INFLUENCE_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    SFT_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    loop_id: str
    seed: int
    iterations: int
    continuous: bool
    max_rounds: int
    patience: int
    artifacts: str
    models: ModelsConfig
    data: DataConfig
    sizes: SizesConfig
    synthesis: _teacher_pb2.SynthesisSettings
    influence: _influence_pb2.InfluenceSettings
    preference: _preference_pb2.PreferenceSettings
    warmup: _trainer_pb2.SFTSettings
    dpo: _trainer_pb2.DPOSettings
    sft: _trainer_pb2.SFTSettings
    evaluation: EvaluationConfig
    def __init__(self, name: _Optional[str] = ..., loop_id: _Optional[str] = ..., seed: _Optional[int] = ..., iterations: _Optional[int] = ..., continuous: _Optional[bool] = ..., max_rounds: _Optional[int] = ..., patience: _Optional[int] = ..., artifacts: _Optional[str] = ..., models: _Optional[_Union[ModelsConfig, _Mapping]] = ..., data: _Optional[_Union[DataConfig, _Mapping]] = ..., sizes: _Optional[_Union[SizesConfig, _Mapping]] = ..., synthesis: _Optional[_Union[_teacher_pb2.SynthesisSettings, _Mapping]] = ..., influence: _Optional[_Union[_influence_pb2.InfluenceSettings, _Mapping]] = ..., preference: _Optional[_Union[_preference_pb2.PreferenceSettings, _Mapping]] = ..., warmup: _Optional[_Union[_trainer_pb2.SFTSettings, _Mapping]] = ..., dpo: _Optional[_Union[_trainer_pb2.DPOSettings, _Mapping]] = ..., sft: _Optional[_Union[_trainer_pb2.SFTSettings, _Mapping]] = ..., evaluation: _Optional[_Union[EvaluationConfig, _Mapping]] = ...) -> None: ...

class ModelsConfig(_message.Message):
    __slots__ = ("teacher", "student", "student_chat_template", "dtype")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    STUDENT_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    student: str
    student_chat_template: str
    dtype: str
    def __init__(self, teacher: _Optional[str] = ..., student: _Optional[str] = ..., student_chat_template: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class DataConfig(_message.Message):
    __slots__ = ("seed_path", "reference_path", "eval_path")
    SEED_PATH_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PATH_FIELD_NUMBER: _ClassVar[int]
    EVAL_PATH_FIELD_NUMBER: _ClassVar[int]
    seed_path: str
    reference_path: str
    eval_path: str
    def __init__(self, seed_path: _Optional[str] = ..., reference_path: _Optional[str] = ..., eval_path: _Optional[str] = ...) -> None: ...

class SizesConfig(_message.Message):
    __slots__ = ("warmup_examples", "probe_prompts", "train_examples")
    WARMUP_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROBE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    warmup_examples: int
    probe_prompts: int
    train_examples: int
    def __init__(self, warmup_examples: _Optional[int] = ..., probe_prompts: _Optional[int] = ..., train_examples: _Optional[int] = ...) -> None: ...

class EvaluationConfig(_message.Message):
    __slots__ = ("baseline", "draws", "null_sft_seed", "max_rows", "shift_samples", "bootstrap_resamples", "confidence", "batch_size")
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    DRAWS_FIELD_NUMBER: _ClassVar[int]
    NULL_SFT_SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    SHIFT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    baseline: bool
    draws: int
    null_sft_seed: bool
    max_rows: int
    shift_samples: int
    bootstrap_resamples: int
    confidence: float
    batch_size: int
    def __init__(self, baseline: _Optional[bool] = ..., draws: _Optional[int] = ..., null_sft_seed: _Optional[bool] = ..., max_rows: _Optional[int] = ..., shift_samples: _Optional[int] = ..., bootstrap_resamples: _Optional[int] = ..., confidence: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Loop(_message.Message):
    __slots__ = ("loop_id", "state", "iteration", "stage", "rounds_completed", "error_message", "summary", "age_seconds", "store_uri", "waiting_for")
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORE_URI_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    state: LoopState
    iteration: int
    stage: str
    rounds_completed: int
    error_message: str
    summary: _common_pb2.ArtifactRef
    age_seconds: float
    store_uri: str
    waiting_for: str
    def __init__(self, loop_id: _Optional[str] = ..., state: _Optional[_Union[LoopState, str]] = ..., iteration: _Optional[int] = ..., stage: _Optional[str] = ..., rounds_completed: _Optional[int] = ..., error_message: _Optional[str] = ..., summary: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., age_seconds: _Optional[float] = ..., store_uri: _Optional[str] = ..., waiting_for: _Optional[str] = ...) -> None: ...

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
    kind: LoopEventKind
    iteration: int
    stage: str
    progress: _common_pb2.Progress
    metrics: _containers.ScalarMap[str, float]
    loop: Loop
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[LoopEventKind, str]] = ..., iteration: _Optional[int] = ..., stage: _Optional[str] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., loop: _Optional[_Union[Loop, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("loop_id", "from_sequence")
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    from_sequence: int
    def __init__(self, loop_id: _Optional[str] = ..., from_sequence: _Optional[int] = ...) -> None: ...

class WatchLoopResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: LoopEvent
    def __init__(self, event: _Optional[_Union[LoopEvent, _Mapping]] = ...) -> None: ...
