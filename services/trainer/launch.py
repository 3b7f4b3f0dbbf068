"""Multi-process training: a stage's TRL run launched as N ranks with ``accelerate launch`` (DDP, FSDP).

The service process stays the only one that talks to the store and to the job: it writes a work file (JSON: the
local paths of the model and the data, the resolved settings, the output folder), launches

    accelerate launch --config_file <cfg> --num_processes N -m services.trainer.rank <work file>

and reads the events rank 0 prints on stdout (lines starting with :data:`MARKER`): progress, which goes to the
job, and checkpoints, which it uploads to the store (rank 0 hands the Trainer's checkpoint folder over, see
``services.trainer.rank``). Every rank records its rank and world size when it finishes, so a launch that silently
ran fewer processes fails. A rank's failure is an error with the exit code and the last lines of its stderr, never
a traceback; a cancelled job terminates the launcher and every rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import errors
from common.checkpoints import StageCheckpoint
from common.errors import MontessoriError
from common.logs import get_logger
from common.progress import Progress
from services.trainer.callbacks import TRAINER_PART

#: Rank 0's event lines on stdout start with this; other output is logged at debug level.
MARKER = "@montessori "
#: The child's module, run by each rank.
ENTRY = "services.trainer.rank"
#: Files in the launch's scratch folder.
WORK_FILE, RESULT_FILE, STDERR_FILE, RANKS_DIR, HANDOFF_DIR = (
    "work.json",
    "result.json",
    "stderr.log",
    "ranks",
    "handoff",
)
#: Lines of the ranks' stderr quoted in a failure, and characters of each rank's exception.
TAIL_LINES, CRASH_CHARS = 12, 300
#: Seconds without an event after which the job's progress is re-reported, so that a cancel reaches a child that is
#: still loading its model (the job machinery raises Cancelled from a progress report).
HEARTBEAT_SECONDS = 2.0
#: Seconds the launcher and its ranks get to exit on SIGTERM before they are killed.
STOP_GRACE_SECONDS = 15.0

REPO = Path(__file__).resolve().parents[2]
log = get_logger(__name__)


@dataclass(frozen=True)
class Launcher:
    """Runs a training stage as ``processes`` ranks with the accelerate config ``accelerate_config``."""

    processes: int
    accelerate_config: Path
    #: Launches after the first when the ranks crash (see :meth:`run`).
    restarts: int = 1

    @classmethod
    def from_config(cls, config) -> Launcher | None:
        """The launcher of a :class:`TrainerServiceConfig`; None for one process (training stays in-process)."""
        if config.processes <= 1:
            return None
        return cls(config.processes, Path(config.accelerate_config).resolve(), config.restarts)

    def command(self, work_file: Path, port: int) -> list[str]:
        """The launch command line (``python -m accelerate.commands.launch``: the venv's, whatever PATH says)."""
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(self.accelerate_config),
            "--num_processes",
            str(self.processes),
            "--main_process_port",
            str(port),
            "-m",
            ENTRY,
            str(work_file),
        ]

    def run(
        self,
        work: dict,
        scratch: Path,
        *,
        progress: Progress,
        stage: str,
        checkpoint: StageCheckpoint | None = None,
    ) -> dict:
        """Train ``work`` (see ``services.trainer.rank``) in ``processes`` ranks; rank 0's result (the training
        result's fields). With ``checkpoint``, the ranks resume from its restored Trainer folder and each folder
        they save is uploaded as its next version.

        Ranks that die without a montessori error of their own (a signal, a collective's transport failing) are
        launched again, up to ``restarts`` times, from the last checkpoint they handed over: a resumed run
        publishes what an uninterrupted one would. A montessori error is the input's fault and is raised at once."""
        attempt = 0
        while True:
            folder = scratch / f"attempt-{attempt}"
            code, stderr_path = self._launch(work, folder, progress=progress, stage=stage, checkpoint=checkpoint)
            if code == 0:
                return _result(folder, self.processes)
            failure = _failure(folder, code, stderr_path)
            if _recorded_error(folder) is not None or attempt == self.restarts:
                raise failure
            attempt += 1
            log.warning(
                f"training processes crashed, restarting from the last checkpoint: {failure.message}",
                extra={"stage": stage, "metrics": {"attempt": attempt, "restarts": self.restarts}},
            )

    def _launch(
        self,
        work: dict,
        scratch: Path,
        *,
        progress: Progress,
        stage: str,
        checkpoint: StageCheckpoint | None,
    ) -> tuple[int, Path]:
        """One launch of the ranks in the fresh folder ``scratch``: its exit code and the ranks' stderr file."""
        scratch.mkdir(parents=True, exist_ok=True)
        resume = checkpoint.restore(lambda parts: parts[TRAINER_PART]) if checkpoint is not None else None
        work = {
            **work,
            "stage": stage,
            "processes": self.processes,
            "result_file": str(scratch / RESULT_FILE),
            "ranks_dir": str(scratch / RANKS_DIR),
            "checkpoint": None
            if checkpoint is None
            else {
                "handoff_dir": str(scratch / HANDOFF_DIR),
                "resume_from": str(resume.value) if resume else None,
                "meta": resume.meta if resume else {},
            },
        }
        work_file = scratch / WORK_FILE
        work_file.write_text(json.dumps(work, indent=2, sort_keys=True))
        stderr_path = scratch / STDERR_FILE
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        command = self.command(work_file, _free_port())
        log.info("launching training processes", extra={"stage": stage, "metrics": {"processes": self.processes}})
        with open(stderr_path, "wb") as stderr:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=REPO,
                start_new_session=True,  # its own process group: a cancel stops the launcher, not the service
            )
        try:
            _follow(child, progress, stage, lambda event: _upload(checkpoint, event))
            return child.wait(), stderr_path
        except BaseException:
            stop(child)
            raise


def _follow(child: subprocess.Popen, progress: Progress, stage: str, upload: Callable[[dict], None]) -> None:
    """Relay rank 0's events until the ranks close stdout; re-report progress while none come (see HEARTBEAT)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        try:
            for line in child.stdout:
                lines.put(line.decode(errors="replace"))
        finally:
            lines.put(None)

    threading.Thread(target=read, name="trainer-launch-stdout", daemon=True).start()
    last = (0, 1, {})
    progress(stage, *last)
    while True:
        try:
            line = lines.get(timeout=HEARTBEAT_SECONDS)
        except queue.Empty:
            progress(stage, *last)
            continue
        if line is None:
            return
        if not line.startswith(MARKER):
            log.debug(line.rstrip(), extra={"stage": stage})
            continue
        event = json.loads(line[len(MARKER) :])
        if event["event"] == "progress":
            last = (event["done"], event["total"], event["metrics"])
            progress(stage, *last)
        elif event["event"] == "checkpoint":
            upload(event)


def _upload(checkpoint: StageCheckpoint | None, event: dict) -> None:
    """Store a Trainer checkpoint folder that rank 0 handed over (moved: the ranks no longer use it)."""
    if checkpoint is not None:
        checkpoint.save({TRAINER_PART: Path(event["folder"])}, event["meta"], move=True)


def stop(child: subprocess.Popen) -> None:
    """Terminate the launcher and its ranks (torch.distributed.run starts each rank in a session of its own, so
    they are found as the launcher's descendants): SIGTERM to all, SIGKILL to any left after the grace period."""
    import psutil

    try:
        ranks = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        ranks = []
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)
        for rank in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.send_signal(signum)
        _, ranks = psutil.wait_procs(ranks, timeout=STOP_GRACE_SECONDS)
        try:
            child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            continue
        if not ranks:
            return


def _rank_errors(scratch: Path) -> list[dict]:
    """The errors the ranks recorded (``ranks/error-<i>.json``), lowest rank first."""
    recorded = sorted((scratch / RANKS_DIR).glob("error-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(p.read_text()) for p in recorded]


def _recorded_error(scratch: Path) -> MontessoriError | None:
    """A rank's own montessori error (lowest rank first), if one was recorded."""
    for error in _rank_errors(scratch):
        cls = getattr(errors, error["type"], None)
        if isinstance(cls, type) and issubclass(cls, MontessoriError):
            return cls(error["message"], field=error.get("field"))
    return None


def _failure(scratch: Path, code: int, stderr_path: Path) -> MontessoriError:
    """The error of a failed launch: a rank's own montessori error if one was recorded, else the exit code and
    what the ranks said (no traceback reaches a client: the quoted lines are the exception's, not its frames)."""
    recorded = _recorded_error(scratch)
    if recorded is not None:
        return recorded
    # A rank's exception may only be the echo of another's death ("connection reset by peer"): the stderr's fatal
    # lines and the launcher's summary name the rank that died first.
    crashes = [e["message"][:CRASH_CHARS] for e in _rank_errors(scratch)]
    detail = " | ".join([*crashes, _stderr_tail(stderr_path)])
    return MontessoriError(f"training processes failed (exit code {code}): {detail}", field="trainer.processes")


#: Lines a rank's runtime writes when it aborts (a C++ exception, a fatal signal): quoted before the launcher's
#: own summary, which would otherwise fill the tail.
FATAL_MARKS = ("terminate called", "what():", "Fatal Python error", "Error:", "Exception:")


def _stderr_tail(path: Path) -> str:
    """The ranks' fatal lines, then the last lines of their stderr that are not traceback frames, joined with ' | '."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    frames = ("Traceback", "File ", "^", "~")
    kept = [line for line in lines if not line.startswith(frames)]
    tail = kept[-TAIL_LINES:]
    fatal = [line for line in kept[: len(kept) - len(tail)] if any(mark in line for mark in FATAL_MARKS)]
    return " | ".join(fatal[-TAIL_LINES:] + tail) or "no output"


def _result(scratch: Path, processes: int) -> dict:
    """Rank 0's result, once every rank has recorded the world size it ran in."""
    reports = [json.loads(p.read_text()) for p in sorted((scratch / RANKS_DIR).glob("rank-*.json"))]
    worlds = sorted({r["world_size"] for r in reports})
    if len(reports) != processes or worlds != [processes]:
        raise MontessoriError(
            f"{len(reports)} of {processes} training processes finished (world sizes {worlds}): check the "
            "accelerate config's distributed_type",
            field="trainer.accelerate_config",
        )
    result = json.loads((scratch / RESULT_FILE).read_text())
    result["ranks"] = reports
    return result


def _free_port() -> int:
    """A free loopback port for the ranks' rendezvous (several launches may run on one node)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
