"""The published CLIPA recipes shipped in ``recipes/published/`` (a baseline for every plan)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from clipa import recipe as recipe_mod


def recipe_dir() -> Path:
    return Path(str(resources.files("clipa.recipes") / "published"))


def load_all() -> dict[str, recipe_mod.Recipe]:
    """name -> recipe, in file-name order."""
    return {p.stem: recipe_mod.load(p) for p in sorted(recipe_dir().glob("*.yaml"))}
