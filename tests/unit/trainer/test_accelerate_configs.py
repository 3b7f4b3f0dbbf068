"""The accelerate configs the trainer ships (configs/accelerate/) load with accelerate's own classes and say what
their names promise; the trainer service's process settings are validated where the service is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidArgument
from services.trainer.config import TrainerServiceConfig, resolve_processes
from services.trainer.launch import Launcher

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "accelerate"


def cluster_config(name: str):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    return config


def test_the_fsdp_config_fully_shards_an_8b_llama_on_8_gpus_in_bf16(tiny_student):
    """FSDP, 8 processes on one machine, bf16, full shard wrapped per LlamaDecoderLayer (the class of a Llama's
    decoder layers in this transformers: the tiny models are Llama too), sharded checkpoints (each rank resumes its
    own shard) and weights read once (rank 0) and broadcast."""
    from accelerate.utils import DistributedType
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    config = cluster_config("fsdp-8gpu.yaml")
    fsdp = config.fsdp_config
    assert config.distributed_type == DistributedType.FSDP
    assert (config.num_processes, config.num_machines, config.mixed_precision, config.use_cpu) == (8, 1, "bf16", False)
    assert fsdp["fsdp_reshard_after_forward"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    wrapped = fsdp["fsdp_transformer_layer_cls_to_wrap"]
    assert wrapped == "LlamaDecoderLayer" and isinstance(getattr(modeling_llama, wrapped), type)
    llama = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_student))
    assert {type(m).__name__ for m in llama.modules()} >= {wrapped}
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]
    assert fsdp["fsdp_use_orig_params"]  # LoRA and per-group weight decay need the original parameters


def test_the_fsdp_config_is_what_accelerate_launch_hands_each_rank():
    """`accelerate launch` turns the file into each rank's environment, which its FSDP plugin reads (building the
    plugin needs a GPU): FSDP on, full shard, sharded state dicts, Llama decoder layers wrapped, bf16."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / "fsdp-8gpu.yaml"), "-m", "services.trainer.rank", "w"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 8
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_RESHARD_AFTER_FORWARD"].upper() == "FULL_SHARD"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"


def test_the_cpu_ddp_config_launches_through_torch_distributed_run():
    """2 processes with the launcher that starts one rank per process (MULTI_GPU: torch.distributed.run; accelerate's
    MULTI_CPU without mpirun would start one), and no mixed precision on CPUs."""
    from accelerate.utils import DistributedType

    config = cluster_config("ddp-cpu.yaml")
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert (config.num_processes, config.mixed_precision) == (2, "no")


def test_the_launch_command_overrides_the_process_count_and_runs_the_rank_module(tmp_path):
    launcher = Launcher(4, CONFIGS / "ddp-cpu.yaml")
    command = launcher.command(tmp_path / "work.json", 29999)
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[-3:] == ["-m", "services.trainer.rank", str(tmp_path / "work.json")]


def test_trainer_service_config():
    """One process needs no accelerate config (and gets no launcher); more need an existing one."""
    assert Launcher.from_config(TrainerServiceConfig()) is None
    config = TrainerServiceConfig(processes=8, accelerate_config=str(CONFIGS / "fsdp-8gpu.yaml"))
    assert Launcher.from_config(config) == Launcher(8, CONFIGS / "fsdp-8gpu.yaml")
    with pytest.raises(InvalidArgument, match="accelerate_config"):
        TrainerServiceConfig(processes=2)
    with pytest.raises(InvalidArgument, match="accelerate_config"):
        TrainerServiceConfig(processes=2, accelerate_config=str(CONFIGS / "missing.yaml"))
    with pytest.raises(InvalidArgument, match="processes"):
        TrainerServiceConfig(processes=0)
    with pytest.raises(InvalidArgument, match="restarts"):
        TrainerServiceConfig(restarts=-1)
    assert Launcher.from_config(TrainerServiceConfig(2, config.accelerate_config, restarts=0)).restarts == 0


def test_processes_setting():
    import torch

    assert resolve_processes("3") == 3
    assert resolve_processes("auto") == max(torch.cuda.device_count(), 1)
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(InvalidArgument, match="processes"):
            resolve_processes(bad)
