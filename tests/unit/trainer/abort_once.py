"""A rank entry for tests: ``services.trainer.rank``, except that rank 1 aborts (SIGABRT, as a collective's C++
exception does) at the end of optimizer step 5, the first time only (a marker file remembers it:
``MONTESSORI_TEST_ABORT_MARKER``). By then rank 0 has handed over the checkpoint of step 3: step 4's gradient
all-reduce needed it past that save."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.trainer import callbacks, rank

ABORT_AT_STEP = 5


def main() -> int:
    marker = Path(os.environ["MONTESSORI_TEST_ABORT_MARKER"])
    original = callbacks.ProgressCallback.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if os.environ.get("RANK") == "1" and state.global_step == ABORT_AT_STEP and not marker.exists():
            marker.write_text("aborted once\n")
            os.abort()
        return original(self, args, state, control, **kwargs)

    callbacks.ProgressCallback.on_step_end = on_step_end
    return rank.main()


if __name__ == "__main__":
    sys.exit(main())
