from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesisSettings(_message.Message):
    __slots__ = ("prompt_style", "examples_per_prompt", "generated_examples_per_prompt", "samples_per_prompt", "temperature", "top_p", "presence_penalty", "max_new_tokens", "response_temperature", "response_top_p", "response_presence_penalty", "response_max_new_tokens", "rouge_threshold", "prompt_batch_size", "response_batch_size", "max_prompt_attempts_factor")
    PROMPT_STYLE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    GENERATED_EXAMPLES_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOP_P_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROUGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROMPT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_ATTEMPTS_FACTOR_FIELD_NUMBER: _ClassVar[int]
    prompt_style: str
    examples_per_prompt: int
    generated_examples_per_prompt: int
    samples_per_prompt: int
    temperature: float
    top_p: float
    presence_penalty: float
    max_new_tokens: int
    response_temperature: float
    response_top_p: float
    response_presence_penalty: float
    response_max_new_tokens: int
    rouge_threshold: float
    prompt_batch_size: int
    response_batch_size: int
    max_prompt_attempts_factor: int
    def __init__(self, prompt_style: _Optional[str] = ..., examples_per_prompt: _Optional[int] = ..., generated_examples_per_prompt: _Optional[int] = ..., samples_per_prompt: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., response_temperature: _Optional[float] = ..., response_top_p: _Optional[float] = ..., response_presence_penalty: _Optional[float] = ..., response_max_new_tokens: _Optional[int] = ..., rouge_threshold: _Optional[float] = ..., prompt_batch_size: _Optional[int] = ..., response_batch_size: _Optional[int] = ..., max_prompt_attempts_factor: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "teacher", "teacher_label", "seed_set", "output_prefix", "num_prompts", "target_examples", "seed", "synthesis", "teacher_version", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    TEACHER_LABEL_FIELD_NUMBER: _ClassVar[int]
    SEED_SET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SYNTHESIS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    teacher: _common_pb2.ModelSpec
    teacher_label: str
    seed_set: _common_pb2.ArtifactRef
    output_prefix: str
    num_prompts: int
    target_examples: int
    seed: int
    synthesis: SynthesisSettings
    teacher_version: str
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., teacher: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., teacher_label: _Optional[str] = ..., seed_set: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., num_prompts: _Optional[int] = ..., target_examples: _Optional[int] = ..., seed: _Optional[int] = ..., synthesis: _Optional[_Union[SynthesisSettings, _Mapping]] = ..., teacher_version: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class CanaryResult(_message.Message):
    __slots__ = ("passed", "tokens", "max_abs_diff", "mean_abs_diff", "tolerance", "seconds")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    tokens: int
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    seconds: float
    def __init__(self, passed: _Optional[bool] = ..., tokens: _Optional[int] = ..., max_abs_diff: _Optional[float] = ..., mean_abs_diff: _Optional[float] = ..., tolerance: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class TeacherVersion(_message.Message):
    __slots__ = ("name", "model", "backend", "adapter_digest", "rank", "exact", "canary")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: _common_pb2.ModelSpec
    backend: str
    adapter_digest: str
    rank: int
    exact: bool
    canary: CanaryResult
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., backend: _Optional[str] = ..., adapter_digest: _Optional[str] = ..., rank: _Optional[int] = ..., exact: _Optional[bool] = ..., canary: _Optional[_Union[CanaryResult, _Mapping]] = ...) -> None: ...

class LoadTeacherVersionRequest(_message.Message):
    __slots__ = ("name", "teacher")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    name: str
    teacher: _common_pb2.ModelSpec
    def __init__(self, name: _Optional[str] = ..., teacher: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ...) -> None: ...

class LoadTeacherVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: TeacherVersion
    def __init__(self, version: _Optional[_Union[TeacherVersion, _Mapping]] = ...) -> None: ...

class UnloadTeacherVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadTeacherVersionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTeacherVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTeacherVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[TeacherVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[TeacherVersion, _Mapping]]] = ...) -> None: ...
