"""The stage contracts: each stage's settings message mirrors the worker config that resolves it, and the
controller reaches the workers only through the montessori.v1 messages (no import of a worker package)."""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from montessori.v1 import controller_pb2, influence_pb2, preference_pb2, teacher_pb2, trainer_pb2
from services.controller import config as controller_config
from services.influence.config import InfluenceConfig
from services.preference.config import PreferenceConfig
from services.teacher.config import SynthesisConfig
from services.trainer.config import DPOSettings, SFTSettings, WarmupSettings

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("teacher", "influence", "preference", "trainer")
MIRRORS = [
    (teacher_pb2.SynthesisSettings, SynthesisConfig),
    (influence_pb2.InfluenceSettings, InfluenceConfig),
    (preference_pb2.PreferenceSettings, PreferenceConfig),
    (trainer_pb2.SFTSettings, SFTSettings),
    (trainer_pb2.SFTSettings, WarmupSettings),
    (trainer_pb2.DPOSettings, DPOSettings),
    (controller_pb2.RunConfig, controller_config.RunConfig),
    (controller_pb2.ModelsConfig, controller_config.ModelsConfig),
    (controller_pb2.DataConfig, controller_config.DataConfig),
    (controller_pb2.SizesConfig, controller_config.SizesConfig),
    (controller_pb2.EvaluationConfig, controller_config.EvaluationConfig),
]
_SCALARS = {
    int: (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64),
    float: (FieldDescriptor.CPPTYPE_DOUBLE,),
    bool: (FieldDescriptor.CPPTYPE_BOOL,),
    str: (FieldDescriptor.CPPTYPE_STRING,),
}


def _base(tp):
    """``X | None`` -> X; ``Literal["a", ...]`` -> str."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    return tp


@pytest.mark.parametrize("message,config", MIRRORS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_each_settings_message_mirrors_its_config(message, config):
    """Same field names, compatible types, and every scalar optional (unset = the config's default): a setting
    added to one and not the other fails here."""
    fields = message.DESCRIPTOR.fields_by_name
    hints = typing.get_type_hints(config)
    names = [f.name for f in dataclasses.fields(config)]
    assert sorted(fields) == sorted(names)
    for name in names:
        descriptor, tp = fields[name], _base(hints[name])
        if descriptor.message_type is not None:
            assert (
                descriptor.message_type.full_name == getattr(tp, "DESCRIPTOR", None).full_name
                if hasattr(tp, "DESCRIPTOR")
                else dataclasses.is_dataclass(tp)
            ), name
        else:
            assert descriptor.cpp_type in _SCALARS[tp], name
            assert descriptor.has_presence, f"{name} must be optional: unset takes the default"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_the_controller_imports_no_worker_package():
    found = [
        (path.name, name)
        for path in (REPO / "services" / "controller").glob("*.py")
        for name in _imports(path)
        if any(name.startswith(f"services.{worker}") for worker in WORKERS)
    ]
    assert found == []


@pytest.mark.parametrize("worker", WORKERS)
def test_a_worker_imports_no_other_worker(worker):
    others = [w for w in (*WORKERS, "controller") if w != worker]
    found = [
        (path.name, name)
        for path in (REPO / "services" / worker).glob("*.py")
        for name in _imports(path)
        if any(name.startswith(f"services.{other}") for other in others)
    ]
    assert found == []


def test_the_controller_needs_no_torch():
    """Nothing the controller imports loads torch (its image needs none)."""
    import subprocess
    import sys

    code = (
        "import sys, cli.serve, common.service_main, services.controller.servicer, services.controller.loop, "
        "services.controller.remote, services.controller.leader; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_each_stage_is_declared_once_in_the_registry():
    """The stage registry (common/stages.py) is the one dispatch table: every stage RPC of a worker service has a
    row naming its request, response and stage function, and each worker servicer's handler of it is the
    registry's (no hand-written dispatch)."""
    import importlib

    from common.stages import STAGES, stage_of
    from montessori.v1 import common_pb2

    job_rpcs = {"GetJob", "CancelJob", "WatchJob"}
    declared = set()
    for worker, module in (("teacher", teacher_pb2), ("influence", influence_pb2), ("preference", preference_pb2)):
        declared |= {(worker, m.name) for m in module.DESCRIPTOR.services_by_name[f"{worker.title()}Service"].methods}
    declared |= {("trainer", m.name) for m in trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].methods}
    stage_rpcs = {
        (worker, name)
        for worker, name in declared
        if name not in job_rpcs and not name.endswith(("TeacherVersion", "TeacherVersions"))
    }
    assert {(s.service, s.rpc) for s in STAGES} == stage_rpcs
    assert len({s.request for s in STAGES}) == len(STAGES)
    for stage in STAGES:
        assert stage_of(stage.request) is stage
        assert stage.response.DESCRIPTOR.fields_by_name["job"].message_type == common_pb2.Job.DESCRIPTOR
        module, _, function = stage.function.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
        servicer = importlib.import_module(f"services.{stage.service}.servicer")
        cls = next(c for c in vars(servicer).values() if isinstance(c, type) and c.__name__.endswith("Servicer"))
        assert getattr(cls, stage.rpc).__qualname__ == stage.rpc, f"{cls.__name__}.{stage.rpc} is hand-written"


@pytest.mark.parametrize("message,config", MIRRORS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_setting_is_documented_once_in_the_proto(message, config):
    """A setting's help (what `montessori config` prints) is its proto field's comment, not a second text;
    only a field WarmupSettings overrides with another default keeps a help of its own."""
    from montessori.v1.field_docs import FIELD_DOCS

    overridden = set(WarmupSettings.__dict__.get("__annotations__", {})) if config is WarmupSettings else set()
    for f in dataclasses.fields(config):
        if f.name not in overridden:
            assert f.metadata["help"] == FIELD_DOCS[f"{message.DESCRIPTOR.full_name}.{f.name}"], f.name
