"""clipa-export RUN_DIR OUT_DIR: a finished run's model as a folder OpenCLIP loads (and so clip_benchmark).

Writes OUT_DIR/open_clip_config.json and OUT_DIR/open_clip_model.safetensors from
RUN_DIR/checkpoints/final.safetensors. RUN_DIR may be a URL, e.g. a TPU pod's gs:// run directory;
OUT_DIR is local. The run must have been trained with `encoder.class_token: true`
(OpenCLIP's ViT always has a class token); anything OpenCLIP cannot express is refused in one line.

Examples:

    clipa-export runs/demo exported/demo
    clipa-export gs://my-bucket/pod-run exported/pod-run
    python -c "import open_clip; print(open_clip.create_model_and_transforms('local-dir:exported/demo')[0])"
"""
from __future__ import annotations

import typer
from rich.console import Console

from clipa.cli._common import entry, version_option

app = typer.Typer(name="clipa-export", add_completion=False, help=__doc__, rich_markup_mode="markdown")


@app.command(help=__doc__)
def export(
    run_dir: str = typer.Argument(..., help="a finished clipa run directory: a path or a URL (gs://BUCKET/RUN)"),
    out_dir: str = typer.Argument(..., help="folder to write (created; existing files of the same names replaced)"),
    version: bool = version_option(),
) -> None:
    from clipa.export import export as do_export

    out = do_export(run_dir, out_dir)
    Console(stderr=True, highlight=False).print(
        f"wrote {out}; load it with open_clip.create_model_and_transforms('local-dir:{out}')")


main = entry(app)

if __name__ == "__main__":
    main()
