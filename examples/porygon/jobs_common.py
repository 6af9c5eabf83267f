"""What the Porygon jobs share: where they write their results, and how.

Output goes under one directory (env STRIDE_EXAMPLE_OUTPUT, else ./.stride/summaries), read
at each step rather than at import, so tests and demos can point every run somewhere else
without re-creating the app.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

OUTPUT_ENV = "STRIDE_EXAMPLE_OUTPUT"
DEFAULT_OUTPUT_DIR = Path(".stride") / "summaries"

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
"""An id that is safe as a file name: ids from events end up in paths."""


def output_dir() -> Path:
    """The directory the example writes summaries, answers and the outbox into."""
    return Path(os.environ.get(OUTPUT_ENV) or DEFAULT_OUTPUT_DIR)


def context_dir(context_id: str) -> Path:
    """Where the summaries of one context live; the AI job reads them back from here."""
    return output_dir() / "contexts" / context_id


def write_json_atomic(target: Path, value: Any) -> Path:
    """Write `value` as JSON via a temp file and a rename, so readers never see half a file.

    A step may run twice (a crash after the write, before the checkpoint); rewriting the same
    content is then harmless.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target
