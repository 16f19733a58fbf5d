"""The recipe: the one contract between the planner, the backends and the report.

A recipe is data: an encoder, a dataset, the hardware, an ordered list of stages and
the predictions the planner made for it. Durations are in samples seen (one internal
unit); steps are derived from samples and the global batch only at the edges.

``load(path)`` validates a YAML file and raises ``UserError`` naming the bad field.
"""
from __future__ import annotations

import dataclasses
import decimal
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import (AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field,
                      field_validator, model_validator)

from clipa import encoders, fs, reductions
from clipa.datasets import DATASETS
from clipa.pricing import PRICING
from clipa.errors import UserError, load_yaml, validate


class _Strict(BaseModel):
    # Unknown fields fail at load (big_vision's parse_arg lesson): a typo never silently does nothing.
    # NaN/inf are refused everywhere: a NaN learning rate or price would train or plan silently wrong.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _registered(check, v: str) -> str:
    """Run a registry look-up; its UserError becomes the ValueError pydantic reports with the field's path."""
    try:
        check(v)
    except UserError as e:
        raise ValueError(str(e)) from None
    return v


def _name_in(check):
    """A string field that must name an entry of a registry (``check`` looks it up)."""
    return Annotated[str, AfterValidator(lambda v: _registered(check, v))]


def _whole_number(v):
    """'12.8e9' -> 12800000000. YAML 1.1 (PyYAML) reads an exponent without a dot or a sign as a string, so
    a count written as big_vision configs write it would be refused as "not a valid integer"."""
    if isinstance(v, str):
        try:
            d = decimal.Decimal(v.replace("_", ""))
        except decimal.InvalidOperation:
            return v
        if d.is_finite() and d == d.to_integral_value():
            return int(d)
    return v


Count = Annotated[int, BeforeValidator(_whole_number)]  # a number of samples


class EncoderSpec(_Strict):
    name: _name_in(encoders.get) = Field(description="registry name, e.g. 'L/16' (clipa.encoders)")
    class_token: bool = Field(False, description="prepend a learned class token to the image tower, as OpenCLIP's "
                                                 "ViT does (clipa-export needs it)")

    @property
    def spec(self) -> encoders.Encoder:
        enc = encoders.get(self.name)
        if self.class_token:
            enc = dataclasses.replace(enc, vision=dataclasses.replace(enc.vision, class_token=True))
        return enc


class DatasetSpec(_Strict):
    name: _name_in(DATASETS.get) = Field(description=DATASETS.help())
    train: Optional[str] = Field(None, description="webdataset shards: path, brace pattern or list file")
    train_samples: Optional[Count] = Field(None, gt=0, description="samples in one pass of `train`")
    val: Optional[str] = Field(None, description="ImageNet-style val folder (val/CLASS/*.jpg)")
    classnames: Optional[str] = Field(None, description="file with one class name per line")
    templates: Optional[str] = Field(None, description="file with one prompt template per line, '{}' for the class")
    val_images: Optional[int] = Field(None, ge=1, description="evaluate on at most this many `val` images: evenly "
                                      "spaced over the sorted files, so each class keeps its share (default: all)")
    workers: int = Field(2, ge=0, description="data-loading worker processes per training process (one per GPU; "
                         "the JAX backend: one per host); clipa-plan writes the number that uses every core")


class HardwareSpec(_Strict):
    name: str = Field(description="hardware name, e.g. 'a100x8', 'tpu-v4-64', 'cpu' (clipa.costmodels.hardware)")
    usd_per_hour: Optional[float] = Field(None, ge=0, description="price of the whole machine/slice, $/hour")
    pricing: Literal[PRICING] = Field("on-demand", description="which price usd_per_hour is (clipa-plan --pricing): "
                                      "spot = preemptible, checkpointing often; committed-1y/-3y = a 1- or 3-year "
                                      "committed-use discount")
    # The name is checked against the cost models where the recipe is used (clipa.cli._common.load_recipe),
    # not here: the recipe imports no cost model (data flows one way: costmodels -> recipe).


class ImageReductionSpec(_Strict):
    kind: _name_in(reductions.IMAGE.get) = Field("resize", description=reductions.IMAGE.help())
    mask_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of patch tokens removed (mask kinds)")

    @model_validator(mode="after")
    def _ratio_only_for_masks(self):
        if not reductions.IMAGE.get(self.kind).masks and self.mask_ratio != 0.0:
            raise ValueError(f"mask_ratio must be 0 when kind is {self.kind!r} (it reduces tokens by image_size)")
        return self


class OptimizerSpec(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(gt=0, description="peak learning rate")
    betas: tuple[float, float] = (0.9, 0.95)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    grad_clip: Optional[float] = Field(None, gt=0, description="global-norm clip; none by default")


class ScheduleSpec(_Strict):
    name: Literal["cosine", "constant"] = "cosine"
    warmup_samples: Count = Field(0, ge=0, description="linear warmup length in samples seen")
    min_lr: float = Field(0.0, ge=0)


class AugmentSpec(_Strict):
    """CLIPA's augmentation (recipes_clipa_reference.md): RRC scale, colour jitter, grayscale."""

    random_resized_crop: Optional[tuple[float, float]] = (0.4, 1.0)
    color_jitter: Optional[tuple[float, float, float, float]] = None
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.0, ge=0, le=1)

    @field_validator("random_resized_crop")
    @classmethod
    def _crop(cls, v):
        if v is not None and not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"must be (min, max) with 0 < min <= max <= 1, got {list(v)}")
        return v


class Stage(_Strict):
    name: str
    samples: Count = Field(gt=0, description="samples seen in this stage")
    global_batch: int = Field(gt=0)
    image_size: int = Field(gt=0, description="input resolution in px")
    image_reduction: ImageReductionSpec = ImageReductionSpec()
    text_len: int = Field(ge=2, description="text tokens per caption, incl. start/end tokens (so at least 2)")
    text_reduction: _name_in(reductions.TEXT.get) = Field("truncate", description=reductions.TEXT.help())
    optimizer: OptimizerSpec
    schedule: ScheduleSpec = ScheduleSpec()
    augment: AugmentSpec = AugmentSpec()
    pos_embed: Literal["sincos", "learned"] = "sincos"

    @model_validator(mode="after")
    def _schedule_fits_the_stage(self):
        """A digit too many or too few, which would train a whole stage at the wrong learning rate."""
        sch, lr = self.schedule, self.optimizer.lr
        if self.global_batch > self.samples:  # one step would train on global_batch samples, not samples
            raise ValueError(f"global_batch {self.global_batch:,} is more than the stage's {self.samples:,} samples: "
                             f"a stage trains whole batches, so it would train {self.global_batch:,}")
        if sch.warmup_samples > self.samples:
            raise ValueError(f"schedule.warmup_samples {sch.warmup_samples:,} is more than the stage's "
                             f"{self.samples:,} samples: the learning rate would never reach optimizer.lr")
        if sch.name == "cosine" and sch.min_lr > lr:
            raise ValueError(f"schedule.min_lr {sch.min_lr:g} is above optimizer.lr {lr:g}: the cosine schedule "
                             "would raise the learning rate")
        return self

    def image_tokens(self, encoder: encoders.Encoder) -> int:
        """Patch tokens the image tower sees after reduction."""
        return encoder.vision.kept_tokens(self.image_size, self.image_reduction.mask_ratio)

    @property
    def steps(self) -> int:
        return math.ceil(self.samples / self.global_batch)

    def every(self, samples: Optional[int]) -> int:
        """An interval in samples -> optimizer steps (at least 1); 0 when ``samples`` is unset."""
        return max(1, round(samples / self.global_batch)) if samples else 0

    def evaluations(self, eval_every_samples: Optional[int]) -> int:
        """Zero-shot evaluations the training loop runs in this stage: one at its end, plus one every
        ``eval_every_samples`` before it (backends/loop.py)."""
        every = self.every(eval_every_samples)
        return 1 + ((self.steps - 1) // every if every else 0)

    @property
    def warmup_steps(self) -> int:
        """Warmup in optimizer steps: warmup samples / global batch, rounded (Python's round), at most
        the stage's steps. Both backends use this."""
        return min(self.steps, round(self.schedule.warmup_samples / self.global_batch))


class TrainSpec(_Strict):
    """How to execute, not what to train: the same recipe runs on a laptop or a pod."""

    seed: int = Field(0, ge=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every_samples: Optional[Count] = Field(None, gt=0)
    # 30 min: a preempted or killed run loses at most half an hour, for one checkpoint write per half hour.
    checkpoint_every_minutes: float = Field(30.0, gt=0, description="also checkpoint after this much wall time "
                                            "(spot plans set their own: clipa.planner.spot)")
    eval_every_samples: Optional[Count] = Field(None, gt=0)
    log_every_steps: int = Field(10, gt=0)
    compute_threads: Optional[int] = Field(None, gt=0, description="CPU training: torch compute threads per "
                                           "process (default: from the decode load and free cores, "
                                           "backends/threads.py)")
    report_to: list[Literal["tensorboard"]] = Field(
        [], description="trackers fed every metrics line besides metrics.jsonl (RUN_DIR/tensorboard/)")


# Recipes written before device_hours was the one name (clipa 0.1 wrote gpu_hours) still load.
_OLD_HOURS = AliasChoices("device_hours", "gpu_hours")


class StagePrediction(_Strict):
    name: str
    image_size: int
    image_tokens: int
    text_len: int
    samples: int
    train_flops_per_sample: float
    train_flops: float
    device_hours: float = Field(validation_alias=_OLD_HOURS)
    wall_hours: float
    # Defaults to None: to_yaml drops None values, and an unpriced plan must load again.
    cost_usd: Optional[float] = Field(None, description="None when the hardware has no known price")
    predicted_top1: Optional[float] = None


class FrontPoint(_Strict):
    """One plan of the planner's predicted top-1 / cost Pareto front."""

    label: str = Field(description="encoder, image tokens and pre-training samples")
    top1: float = Field(description="predicted zero-shot top-1, percent")
    device_hours: float
    cost_usd: Optional[float] = Field(None, description="None when the hardware has no known price")


class Predictions(_Strict):
    predicted_top1: float = Field(description="zero-shot ImageNet-1k top-1, percent")
    predicted_top1_interval: tuple[float, float]
    device_hours: float = Field(description="device-hours (GPU or TPU chip)", validation_alias=_OLD_HOURS)
    wall_hours: float
    # Defaults to None: to_yaml drops None values, and an unpriced plan must load again.
    cost_usd: Optional[float] = Field(None, description="None when the hardware has no known price")
    hardware: str
    cost_model_version: str
    stages: list[StagePrediction] = []
    extrapolation: list[str] = Field([], description="each axis on which the accuracy law extrapolates beyond "
                                      "its fitted data (empty: inside)")
    front: list[FrontPoint] = Field([], description="the planner's Pareto front on this hardware and dataset as it "
                                    "planned (at most 12 points, cheapest first): clipa-report plots it as written")
    recipe_digest: Optional[str] = Field(None, description="the recipe they were made for (Recipe.digest): clipa-run "
                                         "refuses predictions that a later edit of the recipe left behind")


class Provenance(_Strict):
    """How a generated recipe was made, so a plan can be reproduced or questioned later."""

    command: str
    clipa_version: str
    created: str = Field(description="UTC time, ISO 8601")
    budget_usd: Optional[float] = None
    device_hours: Optional[float] = Field(None, validation_alias=_OLD_HOURS)
    hardware: Optional[str] = None


# Largest input size in any OpenCLIP model config (open_clip 3.3 model_configs: 512 px); well above it
# is a typo (2240 for 224), not a plan.
MAX_IMAGE_SIZE = 1024


class Recipe(_Strict):
    name: str = Field(description="names the run directory (runs/<name>): needs a letter or digit")
    encoder: EncoderSpec
    dataset: DatasetSpec
    hardware: HardwareSpec
    stages: list[Stage] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    predictions: Optional[Predictions] = None
    notes: Optional[str] = None
    provenance: Optional[Provenance] = None

    @field_validator("name")
    @classmethod
    def _names_a_directory(cls, v: str) -> str:
        # '..' or '/' alone would put the run directory outside runs/ (or into the current directory)
        if not any(c.isalnum() for c in v):
            raise ValueError(f"{v!r} has no letter or digit; it names the run directory")
        return v

    def digest(self) -> str:
        """What its predictions depend on, as a short hash: the encoder, the dataset's name and decoding
        workers, the hardware and its price, the stages, and the two train fields the cost models read.
        Fields left at their default are left out, so a field a later clipa adds does not change it."""
        train = self.train.model_dump(mode="json", include={"grad_checkpointing", "eval_every_samples"})
        parts = self.model_dump(mode="json", include={"encoder", "hardware", "stages"}, exclude_defaults=True)
        parts.update(dataset=self.dataset.name, train=train)
        if "workers" in self.dataset.model_dump(exclude_defaults=True):  # the data-loading bound counts them
            parts.update(workers=self.dataset.workers)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def check_predictions(self, source: str) -> None:
        """UserError when the recipe's predictions were made for another version of it (edited since)."""
        p = self.predictions
        if p is None or (p.recipe_digest in (None, self.digest()) and p.hardware == self.hardware.name):
            return
        where = (f"made for hardware {p.hardware}, the recipe says {self.hardware.name}" if p.hardware != self.hardware.name
                 else "made for this recipe before an edit of its encoder, dataset, hardware, stages or "
                      "train.grad_checkpointing/eval_every_samples")
        raise UserError(f"{source}: predictions: {where}; the report would compare the run with them. Predict it "
                        f"again (clipa-plan --predict {source} --out {source}, adding --calibration FILE if it "
                        f"was calibrated) or delete its predictions block")

    @model_validator(mode="after")
    def _fits_encoder(self):
        enc = self.encoder.spec
        patch = enc.vision.patch
        for i, st in enumerate(self.stages):
            if st.image_size % patch or not patch <= st.image_size <= MAX_IMAGE_SIZE:
                raise ValueError(f"stages[{i}].image_size: {st.image_size} px must be a multiple of the patch "
                                 f"({patch} px) between {patch} and {MAX_IMAGE_SIZE}")
            if st.text_len > enc.text.max_len:
                raise ValueError(f"stages[{i}].text_len: {st.text_len} exceeds the text tower's context ({enc.text.max_len})")
        return self


def from_dict(data: dict, source: str = "recipe") -> Recipe:
    return validate(Recipe, data, source, "recipe")


def load(path: str | Path) -> Recipe:
    path = fs.path(path)  # a run directory's recipe.yaml may be at a URL (clipa/fs.py)
    return from_dict(load_yaml(path, "recipe file"), str(path))


def dump(recipe: Recipe, path: str | Path, header: str = "") -> Path:
    """Write atomically (``fs.write_atomic``) so a crash never leaves half a recipe. ``header`` becomes
    a comment at the top (e.g. what to fill in before launching)."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    fs.write_atomic(path, comment + to_yaml(recipe))
    return fs.path(path)


def round_figures(x, digits: int = 4):
    """Predictions to 4 significant digits: a model's output, not a measurement worth 17 digits."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: round_figures(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [round_figures(v, digits) for v in x]
    return x


def to_yaml(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json", exclude_none=True)
    if "predictions" in data:
        data["predictions"] = round_figures(data["predictions"])
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)
