"""One rank of a multi-process training run: ``accelerate launch ... -m services.trainer.rank <work file>``.

Started by ``services.trainer.launch`` (the service process), never by hand. Every rank runs the same SFT or DPO
as the one-process path (``sft.train_sft``, ``dpo.train_dpo``); the Trainer's accelerator shards the data (and,
under FSDP, the weights) across the ranks. Only rank 0 writes the output folder and speaks to the service, by
:data:`launch.MARKER` lines on stdout; no rank talks to the store. Checkpoints are handed over: when the Trainer has
saved one (every rank has written its part), rank 0 moves the folder out of the Trainer's reach and prints its path,
and the service uploads it. The work file names a checkpoint folder to resume from (the service restored it).

Each rank records ``ranks/rank-<i>.json`` (its rank and world size) when it finishes, and
``ranks/error-<i>.json`` when it stops on an error (a montessori error, which the service raises as is, or the
one line of an unexpected exception).
"""

from __future__ import annotations

import faulthandler
import json
import shutil
import sys
from pathlib import Path

from common.checkpoints import Restored
from common.config import from_dict, to_dict
from common.errors import MontessoriError
from common.models import ModelRef
from services.trainer.launch import MARKER


def emit(event: dict) -> None:
    """One event line for the service (rank 0 only calls this)."""
    print(MARKER + json.dumps(event, sort_keys=True), flush=True)


class HandoffCheckpoint:
    """What ``sft.train_sft`` / ``dpo.train_dpo`` know of a :class:`common.checkpoints.StageCheckpoint`
    (``restore``, ``save``), in a rank: restore is the folder the service restored, save hands the Trainer's folder
    over to the service."""

    def __init__(self, handoff_dir: Path, resume_from: str | None, meta: dict, *, is_main: bool):
        self.handoff_dir = handoff_dir
        self.resume_from = resume_from
        self.meta = meta
        self.is_main = is_main
        self.saved = 0

    def restore(self, load):
        if self.resume_from is None:
            return None
        return Restored(load({"trainer": Path(self.resume_from)}), self.meta)

    def save(self, parts: dict[str, Path], meta: dict, *, move: bool = False) -> bool:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank has written its part (its RNG state) of the folder
        if self.is_main:
            self.saved += 1
            folder = self.handoff_dir / f"v{self.saved}"
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(parts["trainer"]), str(folder))
            emit({"event": "checkpoint", "folder": str(folder), "meta": meta})
        return True


def train(work: dict, *, rank: int) -> dict:
    """Run the work file's training in this rank; the training result's fields (rank 0's are published)."""
    from services.trainer.config import DPOSettings, SFTSettings

    is_main = rank == 0
    model = ModelRef(work["model"]["path"], tuple(work["model"]["adapters"]), work["model"].get("chat_template"))

    def progress(stage: str, done: int, total: int, metrics: dict | None = None) -> None:
        if is_main:
            emit({"event": "progress", "done": done, "total": total, "metrics": metrics or {}})

    saved = work["checkpoint"]
    checkpoint = (
        HandoffCheckpoint(Path(saved["handoff_dir"]), saved["resume_from"], saved["meta"], is_main=is_main)
        if saved
        else None
    )
    output_dir = Path(work["output_dir"])
    if work["kind"] == "sft":
        from services.trainer.sft import train_sft
        from services.trainer.tasks import student_examples

        settings = from_dict(SFTSettings, work["settings"], path="sft")
        result = train_sft(
            model,
            student_examples(Path(work["candidates"]), work["limit"]),
            settings,
            output_dir,
            seed=work["seed"],
            save_optimizer=work["save_optimizer"],
            progress=progress,
            stage=work["stage"],
            checkpoint=checkpoint,
            processes=work["processes"],
        )
    elif work["kind"] == "dpo":
        from common.jsonl import read_jsonl
        from services.trainer.dpo import train_dpo

        settings = from_dict(DPOSettings, work["settings"], path="dpo")
        result = train_dpo(
            model,
            read_jsonl(Path(work["pairs"]), required=("prompt", "chosen", "rejected")),
            settings,
            output_dir,
            seed=work["seed"],
            progress=progress,
            stage=work["stage"],
            checkpoint=checkpoint,
            processes=work["processes"],
        )
    else:
        raise MontessoriError(f"unknown training kind {work['kind']!r}", field="kind")
    return {**to_dict(result), "output_dir": str(output_dir)}


def main(argv: list[str] | None = None) -> int:
    """Entry of each rank: run the work file given as the only argument."""

    from common.envs import Env
    from common.logs import configure_logging

    faulthandler.enable()  # a rank that aborts (SIGABRT in a collective) leaves its Python stack in the stderr file
    env = Env.read()
    configure_logging(env)
    if env.torch_threads:
        import torch

        torch.set_num_threads(env.torch_threads)
    (work_file,) = sys.argv[1:] if argv is None else argv
    work = json.loads(Path(work_file).read_text())
    rank = env.rank
    ranks_dir = Path(work["ranks_dir"])
    ranks_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = train(work, rank=rank)
    except MontessoriError as err:
        error = {"type": type(err).__name__, "message": err.message, "field": err.field}
        (ranks_dir / f"error-{rank}.json").write_text(json.dumps(error, sort_keys=True))
        print(f"rank {rank}: {err}", file=sys.stderr, flush=True)
        return 1
    except Exception as err:  # recorded for the service's error message; the traceback stays in the rank's stderr
        error = {"type": "crash", "message": f"rank {rank}: {type(err).__name__}: {err}", "field": None}
        (ranks_dir / f"error-{rank}.json").write_text(json.dumps(error, sort_keys=True))
        raise
    from accelerate import PartialState

    state = PartialState()
    report = {"rank": state.process_index, "world_size": state.num_processes, "backend": state.backend}
    (ranks_dir / f"rank-{rank}.json").write_text(json.dumps(report, sort_keys=True))
    if state.is_main_process:
        Path(work["result_file"]).write_text(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
