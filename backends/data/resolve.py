"""Where a recipe's data is: check the paths (one-line errors) and generate the demo data when missing.

Framework-free: both backends resolve datasets here before training.
"""
from __future__ import annotations

import json
from pathlib import Path

from clipa import fs
from clipa.errors import UserError
from clipa.recipe import DatasetSpec, Recipe

# The demo's synthetic data (backends/data/demo_data.py), generated into the run directory on first
# use so that `clipa-run recipes/demo.yaml` works from a fresh clone. Sizes chosen so that data
# generation takes seconds on 2 CPU cores (measured with scripts/demo.sh).
DEMO_TRAIN_DEFAULT = 4096
# 2,000 held-out images: at 500 the binomial noise alone was ~2 points sd at 80% top-1, as large as the
# seed-to-seed spread the demo must stay under to judge a prediction (recipes/demo.yaml's notes).
DEMO_VAL = 2000
# The demo dataset is one fixed dataset, like a user's: train.seed varies the training run (init, sample
# order, augmentation), not the data, so runs with different seeds are judged on the same images.
DEMO_DATA_SEED = 0


def demo_dir(run_dir) -> Path:
    """RUN_DIR/data; a host-local folder for a URL run directory (the shards are read as local tars)."""
    return fs.local_dir(run_dir, "data")


def resolve(recipe: Recipe, run_dir: Path, generate: bool = True) -> DatasetSpec:
    """The dataset section with every path filled in and checked; UserError naming a missing one."""
    ds = recipe.dataset
    if ds.name == "demo" and ds.train is None:
        ds = _demo(recipe, run_dir, generate)
    if ds.train is None:
        raise UserError(f"dataset.train: required for dataset {ds.name!r}: set it in the recipe to your webdataset "
                        "shards (a path, brace pattern, list file or folder)")
    from clipa.backends.data import webdataset_io

    try:
        webdataset_io.expand_shards(ds.train)
    except UserError as e:
        raise UserError(f"dataset.train: {e}") from None
    if ds.val is not None:
        for field in ("val", "classnames", "templates"):
            value = getattr(ds, field)
            if value is None:
                raise UserError(f"dataset.{field}: required for zero-shot evaluation when dataset.val is set")
            if not Path(value).exists():
                raise UserError(f"dataset.{field}: {value} not found")
    return ds


def _demo(recipe: Recipe, run_dir: Path, generate: bool) -> DatasetSpec:
    from clipa.backends.data import demo_data

    out = demo_dir(run_dir)
    done = out / "DONE"
    n_train = recipe.dataset.train_samples or DEMO_TRAIN_DEFAULT
    size = max(st.image_size for st in recipe.stages)
    if not done.exists():
        if not generate:
            raise UserError(f"{out}: demo data missing (clipa-run generates it before starting workers)")
        paths = demo_data.generate(out, n_train, DEMO_VAL, size, DEMO_DATA_SEED)
        # written last: a generation killed half-way is redone, never used
        fs.write_atomic(done, json.dumps({k: str(v) for k, v in paths.items()}))
    paths = json.loads(done.read_text())
    return recipe.dataset.model_copy(update={
        "train": paths["train"], "train_samples": int(paths.get("train_samples", n_train)), "val": paths["val"],
        "classnames": paths["classnames"], "templates": paths["templates"],
    })


def check_readable(train: str) -> None:
    """The first shard is a plain tar with a usable sample: catches wrong formats, compressed shards, other
    member names and permissions before a launch (every shard's existence is already checked by
    expand_shards; reading all could take hours)."""
    from clipa.backends.data import webdataset_io

    first = webdataset_io.expand_shards(train)[0]
    try:
        webdataset_io.check_first_shard(first)
    except UserError as e:
        raise UserError(f"dataset.train: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m clipa.backends.data.resolve RECIPE DIR OUT``: write RECIPE to OUT with its dataset paths
    filled in, generating the demo data into DIR/data first when the recipe needs it. ``make demo`` uses it
    so that the pilots and the demo run read one copy of the data, generated before either is timed, as a
    user's own data exists before their pilots run."""
    import argparse

    from clipa import recipe as recipe_mod

    ap = argparse.ArgumentParser(prog="python -m clipa.backends.data.resolve",
                                 description="Write RECIPE to OUT with its dataset paths (the demo data into DIR/data).")
    ap.add_argument("recipe", type=Path)
    ap.add_argument("dir", type=Path, help="the demo data goes to DIR/data")
    ap.add_argument("out", type=Path, help="the recipe with its dataset paths")
    a = ap.parse_args(argv)

    def write() -> int:
        rec = recipe_mod.load(a.recipe)
        rec = rec.model_copy(update={"dataset": resolve(rec, a.dir, generate=True)})
        recipe_mod.dump(rec, a.out, header=f"{a.recipe} with its dataset paths (python -m clipa.backends.data.resolve)")
        return 0

    from clipa.cli._common import run_module

    return run_module(write)  # a half-written dataset has no DONE file and is generated again next time


if __name__ == "__main__":
    raise SystemExit(main())
