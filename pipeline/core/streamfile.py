"""Append steps to the ``stream:`` section of ``params.yaml`` (what `ume rollback`, `ume forget` and the
deletion-debt schedule do), keeping the user's comments and layout; validated before anything is written."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import ConfigError

STREAM_LINE = re.compile(r"^stream:\s*(#.*)?$")


def stream_text_with(params_path: Path, entries: dict[str, dict[str, Any]]) -> str:
    """The text of ``params_path`` with ``entries`` appended to ``stream:``, validated; nothing is written."""
    text = params_path.read_text()
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if STREAM_LINE.match(line)]
    if not starts:
        raise ConfigError("cannot append a step: no block-style 'stream:' section", file=str(params_path), field="stream")
    later = [line for line in lines[starts[0] + 1 :] if line and not line[0].isspace() and not line.startswith("#")]
    if later:
        raise ConfigError("cannot append a step: 'stream' must be the last section of the file", file=str(params_path), field="stream")
    block = yaml.safe_dump(entries, sort_keys=False, default_flow_style=False)
    new_text = text.rstrip("\n") + "\n" + "".join(f"  {line}\n" for line in block.splitlines())
    from pipeline.core.config import parse_params

    parse_params(yaml.safe_load(new_text), file=str(params_path))
    return new_text


def write_stream_text(params_path: Path, text: str) -> None:
    """Replace ``params_path`` with ``text`` atomically (a temporary file and a rename)."""
    tmp = params_path.with_name(f".{params_path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, params_path)


def new_step_key(stream: dict[str, Any], prefix: str) -> str:
    """``<prefix>-NN``, numbered after the stream's length, unique."""
    key = f"{prefix}-{len(stream) + 1:02d}"
    while key in stream:
        key += "x"
    return key
