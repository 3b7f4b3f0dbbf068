from montessori.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SFTSettings(_message.Message):
    __slots__ = ("learning_rate", "epochs", "batch_size", "gradient_accumulation_steps", "lr_scheduler", "warmup_ratio", "decay_ratio", "min_lr_ratio", "max_length", "weight_decay", "report_to", "checkpoint_every", "precision")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    DECAY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_LR_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    REPORT_TO_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    epochs: float
    batch_size: int
    gradient_accumulation_steps: int
    lr_scheduler: str
    warmup_ratio: float
    decay_ratio: float
    min_lr_ratio: float
    max_length: int
    weight_decay: float
    report_to: str
    checkpoint_every: int
    precision: str
    def __init__(self, learning_rate: _Optional[float] = ..., epochs: _Optional[float] = ..., batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., lr_scheduler: _Optional[str] = ..., warmup_ratio: _Optional[float] = ..., decay_ratio: _Optional[float] = ..., min_lr_ratio: _Optional[float] = ..., max_length: _Optional[int] = ..., weight_decay: _Optional[float] = ..., report_to: _Optional[str] = ..., checkpoint_every: _Optional[int] = ..., precision: _Optional[str] = ...) -> None: ...

class DPOSettings(_message.Message):
    __slots__ = ("beta", "learning_rate", "epochs", "batch_size", "gradient_accumulation_steps", "lr_scheduler", "warmup_ratio", "decay_ratio", "min_lr_ratio", "max_length", "lora", "lora_rank", "lora_alpha", "lora_dropout", "max_pairs", "heldout_fraction", "report_to", "loss_type", "checkpoint_every", "precision", "label_smoothing")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    DECAY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_LR_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIRS_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    REPORT_TO_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    beta: float
    learning_rate: float
    epochs: float
    batch_size: int
    gradient_accumulation_steps: int
    lr_scheduler: str
    warmup_ratio: float
    decay_ratio: float
    min_lr_ratio: float
    max_length: int
    lora: bool
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    max_pairs: int
    heldout_fraction: float
    report_to: str
    loss_type: str
    checkpoint_every: int
    precision: str
    label_smoothing: float
    def __init__(self, beta: _Optional[float] = ..., learning_rate: _Optional[float] = ..., epochs: _Optional[float] = ..., batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., lr_scheduler: _Optional[str] = ..., warmup_ratio: _Optional[float] = ..., decay_ratio: _Optional[float] = ..., min_lr_ratio: _Optional[float] = ..., max_length: _Optional[int] = ..., lora: _Optional[bool] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[int] = ..., lora_dropout: _Optional[float] = ..., max_pairs: _Optional[int] = ..., heldout_fraction: _Optional[float] = ..., report_to: _Optional[str] = ..., loss_type: _Optional[str] = ..., checkpoint_every: _Optional[int] = ..., precision: _Optional[str] = ..., label_smoothing: _Optional[float] = ...) -> None: ...

class TrainStudentRequest(_message.Message):
    __slots__ = ("request_id", "student", "candidates", "output_prefix", "sft", "seed", "warmup", "limit", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SFT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    student: _common_pb2.ModelSpec
    candidates: _common_pb2.ArtifactRef
    output_prefix: str
    sft: SFTSettings
    seed: int
    warmup: bool
    limit: int
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., student: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., candidates: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., sft: _Optional[_Union[SFTSettings, _Mapping]] = ..., seed: _Optional[int] = ..., warmup: _Optional[bool] = ..., limit: _Optional[int] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class TrainStudentResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class TrainTeacherRequest(_message.Message):
    __slots__ = ("request_id", "teacher", "pairs", "output_prefix", "dpo", "seed", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    teacher: _common_pb2.ModelSpec
    pairs: _common_pb2.ArtifactRef
    output_prefix: str
    dpo: DPOSettings
    seed: int
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., teacher: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., pairs: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., dpo: _Optional[_Union[DPOSettings, _Mapping]] = ..., seed: _Optional[int] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class TrainTeacherResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
