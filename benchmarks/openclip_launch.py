"""OpenCLIP's trainer as installed, made to run, in this process only (no installed file is changed).

    python -m benchmarks.openclip_launch MODEL_CONFIG.json [open_clip_train.main arguments]

Two things stop ``open_clip_train.main`` here (open_clip_torch 3.3.0, webdataset 1.0.2):

- ``open_clip_train.data`` imports pandas, which open_clip_torch does not declare; it is used only by
  the csv dataset. Where pandas is missing a stand-in module that refuses use is registered, so the
  webdataset path runs.
- webdataset 1.0.2's ``tar_file_expander`` yields an end-of-shard marker (``eof_value={}``) that
  OpenCLIP's ``group_by_keys_nothrow`` reads as a file (``KeyError: 'fname'``; upstream
  mlfoundations/open_clip#935). The fix discussed there, ``eof_value=None``, is bound into
  ``open_clip_train.data``'s own name. The dataloader's workers are forked from this process, so
  they carry the fix too.

We keep the webdataset path rather than ``--dataset-type csv`` so that both trainers read the same
shards (a csv dataset would read extracted files: a different data path, not the one users run).
MODEL_CONFIG.json (OpenCLIP's model config format) is registered under its file stem for ``--model``.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

if importlib.util.find_spec("pandas") is None:
    def _missing(*_a, **_k):
        raise ImportError("pandas is not installed: OpenCLIP's csv dataset needs it (pip install pandas)")

    _pd = types.ModuleType("pandas")
    _pd.read_csv = _missing
    sys.modules["pandas"] = _pd

import open_clip  # noqa: E402
import open_clip_train.data as _oc_data  # noqa: E402
from webdataset import tariterators  # noqa: E402

_oc_data.tar_file_expander = functools.partial(tariterators.tar_file_expander, eof_value=None)


def main(argv: list[str]) -> None:
    config, rest = Path(argv[0]), argv[1:]
    open_clip.add_model_config(config)
    from open_clip_train.main import main as oc_main

    oc_main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
