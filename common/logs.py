"""Structured logging: one JSON object per line on stderr, with context fields.

Use ``get_logger(__name__)`` and pass context as ``extra={"stage": ..., "loop_id": ...}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

from common.envs import Env

_CONTEXT_FIELDS = ("loop_id", "job_id", "stage", "iteration", "service")


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON line with timestamp, level, logger, message and context."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if isinstance(getattr(record, "metrics", None), dict):
            entry["metrics"] = record.metrics
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(env: Env | None = None) -> None:
    """Install the handler on the ``montessori`` logger tree (idempotent; entry points call it)."""
    env = env or Env.read()
    root = logging.getLogger("montessori")
    root.setLevel(env.log_level)
    if not any(getattr(h, "_montessori", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._montessori = True  # type: ignore[attr-defined]
        handler.setFormatter(
            JsonFormatter() if env.log_json else logging.Formatter("%(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    root.propagate = False
    # Library chatter (TRL/transformers warnings about defaults) is not the user's concern.
    for noisy in ("transformers", "trl", "peft", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Deprecation notices inside the ML libraries are for their maintainers, not our users.
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"(transformers|trl|peft|accelerate|datasets)(\.|$)"
    )
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|trl|peft|accelerate)(\.|$)")
    # Their per-call progress bars (weight loading, dataset mapping) would drown ours.
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets  # absent from the vLLM teacher's environment, which trains nothing
    except ImportError:
        return
    datasets.disable_progress_bars()


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``montessori`` tree."""
    return logging.getLogger("montessori." + name.removeprefix("montessori."))
