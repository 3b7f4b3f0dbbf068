"""JSON Lines reading with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import InvalidArgument, NotFound


def read_jsonl(
    path: str | Path, *, label: str | None = None, required: tuple[str, ...] = (), allow_empty: bool = False
) -> list[dict]:
    """Rows of a JSONL file. Empty/malformed lines and missing string fields are errors naming ``file:line``;
    so is a file with no rows, unless ``allow_empty`` (a stage's output may legitimately be empty)."""
    path = Path(path)
    where = label or str(path)
    if not path.is_file():
        raise NotFound(f"{where} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:  # a binary file, or another encoding
        line = data[: err.start].count(b"\n") + 1
        raise InvalidArgument(f"{where}:{line}: not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x})") from None
    if "\x00" in text:
        raise InvalidArgument(f"{where}:{text[: text.index(chr(0))].count(chr(10)) + 1}: a NUL byte (not a text file)")
    lines = text.replace("\r\n", "\n").split("\n")  # not splitlines(): JSON strings may hold U+2028 and the like
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InvalidArgument(f"{where}:{number}: empty line")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidArgument(f"{where}:{number}: malformed JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InvalidArgument(f"{where}:{number}: expected a JSON object")
        for name in required:
            if not isinstance(row.get(name), str) or (name != "input" and not row[name].strip()):
                raise InvalidArgument(f"{where}:{number}: field {name!r} missing or not a non-empty string")
        rows.append(row)
    if not rows and not allow_empty:
        raise InvalidArgument(f"{where}: no rows")
    return rows


def read_instruction_rows(path: str | Path) -> list[dict]:
    """Alpaca-style rows (``instruction``, optional ``input``, ``output``), normalised to have ``input``."""
    rows = read_jsonl(path, required=("instruction", "output"))
    for number, row in enumerate(rows, start=1):
        row.setdefault("input", "")
        if not isinstance(row["input"], str):
            raise InvalidArgument(f"{path}:{number}: field 'input' must be a string")
    return rows
