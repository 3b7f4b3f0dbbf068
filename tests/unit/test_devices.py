"""Issue 14's device settings of the teacher, Evaluate, the trainer, the canary and the GPU memory metrics.

On this CUDA-less machine ``auto`` must resolve to the CPU and give exactly the CPU's numbers, and an explicit
``cuda`` must be FAILED_PRECONDITION naming the field before any model loads. The CUDA branches that can be
decided without a GPU (TrainingArguments, the canary's dtype, the metrics) are tested with CUDA simulated.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from cli.main import make_parser
from common.artifacts import LocalArtifactStore
from common.errors import FailedPrecondition, InvalidArgument
from common.jobs import JobManager
from common.metrics import GpuMemoryCollector, ServiceMetrics
from common.models import ModelRef, load_model, load_tokenizer
from montessori.v1 import common_pb2, influence_pb2
from services.influence import stages as influence_stages
from services.influence import tasks as influence_tasks
from services.influence.servicer import build as influence_build
from services.teacher.backend import BackendCache, SamplingParams
from services.teacher.canary import reference_dtype, reference_logprobs, run_canary
from services.teacher.config import TeacherServiceConfig, VLLMSettings
from services.teacher.servicer import make_backends
from services.trainer.common_args import base_args, device_args
from services.trainer.config import TrainerServiceConfig
from services.trainer.servicer import build as trainer_build
from tests.conftest import DATA

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _refused(call) -> FailedPrecondition:
    with pytest.raises(FailedPrecondition) as caught:
        call()
    assert caught.value.field == "device", caught.value
    return caught.value


# Evaluation ----------------------------------------------------------------------------------------------------


@no_cuda
def test_evaluation_loss_is_identical_on_cpu_and_auto_here(tiny_student):
    model = ModelRef(str(tiny_student))
    losses = {
        device: influence_tasks.evaluation_loss(model, DATA / "eval.jsonl", batch_size=3, limit=8, device=device)
        for device in ("cpu", "auto", torch.device("cpu"))
    }
    assert losses["cpu"] > 0
    assert losses["auto"] == losses["cpu"] == losses[torch.device("cpu")]  # same device, same kernels: bit-equal


def test_evaluation_runs_on_the_model_and_batches_device(tiny_student):
    """row_losses feeds the batches to the model's own device (a CPU model here; batches not moved would fail on
    CUDA), and its losses are fp32 whatever the weights' dtype."""
    tokenizer = load_tokenizer(ModelRef(str(tiny_student)), field="s")
    model = load_model(ModelRef(str(tiny_student)), field="s", dtype="bfloat16", device="cpu")
    rows = [{"instruction": "Name a colour.", "output": "Blue is a colour."}]
    examples = influence_tasks.examples_from_rows(rows, prefix="eval", source="test")
    (loss,) = influence_tasks.row_losses(model, tokenizer, examples, batch_size=1, max_length=64)
    assert isinstance(loss, float) and loss > 0


def _evaluate_request(store, tiny_student) -> influence_pb2.EvaluateRequest:
    rows = store.put_jsonl("data/eval.jsonl", [{"instruction": "Name a colour.", "output": "Blue."}])
    return influence_pb2.EvaluateRequest(
        model=common_pb2.ModelSpec(path=str(tiny_student)),
        rows=common_pb2.ArtifactRef(uri=rows.uri),
        limit=4,
        validate_only=True,
    )


@no_cuda
def test_evaluate_on_cuda_without_one_is_a_failed_precondition_naming_device(tiny_student, tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    error = _refused(lambda: influence_stages.evaluate(store, _evaluate_request(store, tiny_student), device="cuda"))
    assert "CUDA" in str(error)
    influence_stages.evaluate(store, _evaluate_request(store, tiny_student), device="auto")  # validates, no job


@no_cuda
def test_influence_service_with_device_cuda_is_refused_at_start_up(tmp_path):
    jobs = JobManager(service="test", workers=1)
    try:
        _refused(lambda: influence_build(LocalArtifactStore(tmp_path), jobs, threading.Event(), device="cuda:0"))
        influence_build(LocalArtifactStore(tmp_path), jobs, threading.Event(), device="auto")
    finally:
        jobs.shutdown(grace=1.0)


def test_serve_device_flag_reaches_the_teacher_config():
    from services.teacher.main import service_config as _teacher_config

    args = make_parser().parse_args(["serve", "teacher", "--insecure", "--device", "cpu", "--dtype", "bfloat16"])
    config = _teacher_config(args)
    assert (config.device, config.dtype) == ("cpu", "bfloat16")
    assert _teacher_config(make_parser().parse_args(["serve", "teacher", "--insecure"])).device == "auto"


# Teacher -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("device", "gpu"), ("device", "cuda:"), ("dtype", "fp8")])
def test_a_misspelt_teacher_setting_is_an_invalid_argument_naming_the_field(key, value):
    with pytest.raises(InvalidArgument) as caught:
        TeacherServiceConfig(**{key: value})
    assert caught.value.field == key


@no_cuda
def test_teacher_on_cuda_without_one_is_a_failed_precondition_naming_device():
    assert TeacherServiceConfig(device="cuda").device == "cuda"  # the spelling alone is valid anywhere
    _refused(lambda: make_backends(TeacherServiceConfig(device="cuda")))
    _refused(lambda: BackendCache("float32", "cuda:1"))


@no_cuda
def test_teacher_auto_places_the_model_on_the_cpu_here_and_generates(tiny_teacher):
    backend = BackendCache("float32", "auto").get(ModelRef(str(tiny_teacher)))
    assert backend.model.device == torch.device("cpu")
    (texts,) = backend.generate(["Hello"], SamplingParams(n=2, max_new_tokens=4, seed=1))
    assert len(texts) == 2


# Canary --------------------------------------------------------------------------------------------------------


def test_canary_reference_dtype_is_the_engines_16_bit_one_on_simulated_cuda_and_fp32_on_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert reference_dtype(cuda, torch.bfloat16) == "bfloat16"
    assert reference_dtype(cuda, torch.float16) == "float16"
    assert reference_dtype(cuda, torch.float32) == "float32"
    assert reference_dtype(cpu, torch.bfloat16) == "float32"  # a CPU reference stays exact


class _FakeEngine:
    """The two things run_canary asks of a vLLM engine, answered by a transformers model (``shift`` perturbs the
    served log-probabilities, as a stale adapter would)."""

    def __init__(self, teacher, shift: float = 0.0):
        self.tokenizer = load_tokenizer(ModelRef(str(teacher)), field="t")
        self.model = load_model(ModelRef(str(teacher)), field="t")
        self.dtype, self.shift = torch.float32, shift

    def greedy_logprobs(self, prompt_ids, tokens, *, version):
        generator = torch.Generator().manual_seed(0)
        continuation = [int(t) for t in torch.randint(0, self.model.config.vocab_size, (tokens,), generator=generator)]
        served = reference_logprobs(self.model, prompt_ids, continuation)
        return continuation, [value + self.shift for value in served]


def test_canary_scores_on_the_requested_device_and_refuses_a_perturbed_engine(tiny_teacher):
    version = SimpleNamespace(name="v1", ref=ModelRef(str(tiny_teacher)))
    settings = VLLMSettings(canary_tokens=4)
    report = run_canary(_FakeEngine(tiny_teacher), version, settings, device="cpu")
    assert report.passed and report.tokens == 4 and report.max_abs_diff <= 1e-4
    with pytest.raises(FailedPrecondition):
        run_canary(_FakeEngine(tiny_teacher, shift=0.2), version, settings, device="auto")


@no_cuda
def test_canary_on_cuda_without_one_is_a_failed_precondition_naming_device(tiny_teacher):
    version = SimpleNamespace(name="v1", ref=ModelRef(str(tiny_teacher)))
    _refused(lambda: run_canary(_FakeEngine(tiny_teacher), version, VLLMSettings(canary_tokens=2), device="cuda"))


# Trainer -------------------------------------------------------------------------------------------------------


def test_trainer_args_on_simulated_cuda_use_bf16_where_supported_and_not_the_cpu():
    assert device_args(torch.device("cuda"), bf16_supported=True) == {"use_cpu": False, "bf16": True}
    assert device_args(torch.device("cuda:1"), bf16_supported=False) == {"use_cpu": False, "bf16": False}
    assert device_args(torch.device("cpu"), bf16_supported=True) == {"use_cpu": True, "bf16": False}


@no_cuda
def test_trainer_args_auto_and_cpu_train_on_the_cpu_here_and_build_an_sft_config(tmp_path):
    from trl import SFTConfig

    for device in ("auto", "cpu", torch.device("cpu")):
        args = base_args(output_dir=str(tmp_path), seed=0, device=device)
        assert (args["use_cpu"], args["bf16"]) == (True, False)
    config = SFTConfig(**base_args(output_dir=str(tmp_path), seed=0, device="cpu"))
    assert config.use_cpu and not config.bf16 and config.device == torch.device("cpu")


@no_cuda
def test_trainer_on_cuda_without_one_is_a_failed_precondition_naming_device(tmp_path):
    _refused(lambda: base_args(output_dir=str(tmp_path), seed=0, device="cuda"))
    jobs = JobManager(service="test", workers=1)
    try:
        _refused(
            lambda: trainer_build(
                LocalArtifactStore(tmp_path), jobs, threading.Event(), TrainerServiceConfig(device="cuda")
            )
        )
    finally:
        jobs.shutdown(grace=1.0)


def test_trainer_device_must_be_auto_with_several_processes(tmp_path):
    accelerate = tmp_path / "ddp.yaml"
    accelerate.write_text("distributed_type: MULTI_GPU\n")
    assert TrainerServiceConfig(processes=2, accelerate_config=str(accelerate)).device == "auto"
    with pytest.raises(InvalidArgument) as caught:
        TrainerServiceConfig(processes=2, accelerate_config=str(accelerate), device="cuda:0")
    assert caught.value.field == "device"
    with pytest.raises(InvalidArgument) as caught:
        TrainerServiceConfig(device="gpu")
    assert caught.value.field == "device"


# Metrics -------------------------------------------------------------------------------------------------------


class _SimulatedCuda:
    def __init__(self, *, available=True, initialized=True, allocated=(10, 20), peak=(15, 25)):
        self.available, self.initialized, self.allocated, self.peak = available, initialized, allocated, peak

    def is_available(self):
        return self.available

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return len(self.allocated)

    def memory_allocated(self, index):
        return self.allocated[index]

    def max_memory_allocated(self, index):
        return self.peak[index]


def _scrape(cuda) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GpuMemoryCollector("influence", cuda=cuda))
    return registry


def test_gpu_memory_on_simulated_cuda_is_read_per_device_from_torch_cuda():
    registry = _scrape(_SimulatedCuda())
    value = registry.get_sample_value
    assert value("montessori_gpu_memory_bytes", {"service": "influence", "device": "cuda:1"}) == 20.0
    assert value("montessori_gpu_memory_bytes", {"service": "influence", "device": "cuda:0"}) == 10.0
    assert value("montessori_gpu_memory_peak_bytes", {"service": "influence", "device": "cuda:1"}) == 25.0


@pytest.mark.parametrize("cuda", [_SimulatedCuda(available=False), _SimulatedCuda(initialized=False)])
def test_gpu_memory_has_no_series_without_cuda_or_before_it_is_used(cuda):
    assert b"montessori_gpu_memory" not in generate_latest(_scrape(cuda))


@no_cuda
def test_service_metrics_have_no_gpu_series_on_this_cpu_machine():
    metrics = ServiceMetrics("teacher")
    assert b"montessori_gpu_memory" not in generate_latest(metrics.registry)
