"""The exceptions the CLIs turn into one line on stderr and an exit code (never a traceback), and the
one reader of YAML files and formatter of validation errors that word those lines."""
from __future__ import annotations

import errno
import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class UserError(Exception):
    """A mistake in what the user gave (a flag, a file, a field); never a bug in clipa."""

    exit_code = 2


class Interrupted(UserError):
    """Training stopped on SIGINT/SIGTERM/SIGHUP after writing a checkpoint; the message says how to resume.

    Exits 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), the shell's convention."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class NoRoom(UserError):
    """A write to the run directory failed for want of room (a full disk, a quota, a read-only filesystem):
    not a bug, so no traceback, and not a mistake in a flag, so exit 1. The message names the file, the
    newest complete checkpoint (the ones before the failed write are kept) and the command that resumes."""

    exit_code = 1
    FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # out of space: exit 1 from any command, not a usage error


class DecodersDied(UserError):
    """The data's decoding processes died again and again, or a caption tagger once (the system ends processes
    when memory runs out): not a bug and not a usage mistake, so no traceback and exit 1. The training loop
    adds where it stopped, the checkpoint and the command that resumes."""

    exit_code = 1


class _SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping: YAML keeps the last one
    without a word, so a stage's ``lr`` pasted twice would train with whichever came second."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *defaults': the keys given beside it override the merged ones, as YAML says
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                break  # SafeLoader's own error ("found unhashable key") says it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _no_twice(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ValueError(f"key '{twice}' given twice")
    return dict(pairs)


def _where(e: Exception) -> str:
    """A parse error as 'line L, column C: what' (the first line of str(e) is often only its context,
    e.g. 'while scanning for the next token', with no position)."""
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno}, column {e.colno}: {e.msg}"
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_yaml(path: Path, what: str, source: str = "") -> Any:
    """``yaml.safe_load`` of the file at ``path`` (``json.loads`` if it ends in .json: YAML 1.1 reads
    1e-05 as a string); a file that is missing, unreadable, not UTF-8 or not parseable, or that gives a
    key twice, is a one-line UserError naming it (``source``, default the path), ``what`` it should be
    and the line."""
    source = source or str(path)
    if not path.is_file():
        raise UserError(f"{source}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_no_twice)
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (the safe loader, see _SafeLoader)
    except OSError as e:
        raise UserError(f"{source}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not a UTF-8 text file (byte {e.start})") from None
    except (yaml.YAMLError, ValueError) as e:  # json.JSONDecodeError is a ValueError, as is _no_twice's
        raise UserError(f"{source}: not a valid {what} ({_where(e)})") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a {what}") from None


def validation_message(err: ValidationError, source: str) -> str:
    """A pydantic error as one line: the source, the first bad field's path (``stages[0].lr``) and why."""
    errors = err.errors()
    loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in errors[0]["loc"]).replace(".[", "[")
    msg = errors[0]["msg"].removeprefix("Value error, ")
    where = f"{loc}: " if loc else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {where}{msg}{more}"


def validate(model: type[M], data: Any, source: str, what: str) -> M:
    """``data`` (a file's mapping) as ``model``; anything else is a one-line UserError from ``source``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a {what} must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, source)) from None
