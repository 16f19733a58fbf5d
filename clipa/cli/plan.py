"""clipa-plan: from a budget and a hardware target to the CLIPA recipe predicted to be most accurate.

Examples:

    clipa-plan --budget 10000 --hw a100x8           # a dollar budget
    clipa-plan --device-hours 2000 --hw tpu-v4-64   # device-hours (GPU or TPU chip)
    clipa-plan --budget 10000 --hw a100x8,h100x8,tpu-v4-64 --pricing spot  # compare
    clipa-plan --budget 10000 --dataset datacomp-1b --train-data 'shards/{00000..41455}.tar' --val val/ --classnames cls.txt --templates tpl.txt
    clipa-plan --predict recipes/published/clipa_v2_h14_datacomp_70_224.yaml --json
    clipa-plan --fit-report
    clipa-plan --pilot --budget 10000 --hw a100x8 --dataset custom --train-data 'shards/{00000..41455}.tar' --out pilots/
    clipa-plan --pilot --dataset demo --hw cpu --pilot-share 0.2 --out runs/pilots   # the demo's pilots

With --train-data (and --val/--classnames/--templates) the recipe launches as is, with the command the plan
ends with (clipa-run RECIPE --nproc 8 for a100x8). --dataset says what the shards hold: a published dataset, or
custom (your own data: plan its pilots with --pilot, calibrate on them, then plan with --calibration).
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from clipa import __version__
from clipa import datasets
from clipa import recipe as recipe_mod
from clipa.cli._common import entry, err_console, finite, load_recipe, not_with, version_option
from clipa.errors import UserError

app = typer.Typer(name="clipa-plan", add_completion=False, help=__doc__, rich_markup_mode="markdown")
DATASETS = datasets.plannable()  # a plan needs a dataset the law has a prior for
DEFAULT_OUT = Path("recipes/generated.yaml")
BUDGET, DATA, SEARCH, OUTPUT, MODES = ("Budget and hardware", "Your data (written into the recipe)", "Search",
                                       "Output", "Other modes")
# What each mode accepts besides the shared flags; anything else given on the command line is an error.
_PLAN_ONLY = ("budget", "device_hours", "pricing", "deadline", "dataset", "objective", "risk", "out", "name",
              "train_data", "train_samples", "val", "classnames", "templates")
_PREDICT_OK = {"predict", "hw", "prices", "calibration", "as_json", "out"}
_FIT_REPORT_OK = {"fit_report", "plot", "as_json"}
_PILOT_OK = {"pilot", "target", "pilot_share", "budget", "device_hours", "hw", "pricing", "deadline", "prices", "calibration",
             "dataset", "objective", "out", "as_json", "train_data", "train_samples", "val", "classnames", "templates"}


@app.command(help=__doc__)
def plan(
    ctx: typer.Context,
    budget: Optional[float] = typer.Option(None, help="budget in dollars for the whole recipe", rich_help_panel=BUDGET),
    device_hours: Optional[float] = typer.Option(None, "--device-hours", "--gpu-hours", help="budget in device-hours "
                                                 "(GPU or TPU chip; --gpu-hours: the old spelling)",
                                                 rich_help_panel=BUDGET),
    hw: Optional[str] = typer.Option(None, help="hardware: a100x8 (default), a100-40gbx8, h100x8, a100x32 (4 machines), "
                                     "tpu-v4-64, cpu, ...; several, comma-separated, are compared side by side; "
                                     "with --predict, default: the recipe's", rich_help_panel=BUDGET),
    deadline: Optional[float] = typer.Option(None, help="wall-clock deadline in days", rich_help_panel=BUDGET),
    pricing: str = typer.Option("on-demand", help="on-demand | spot (preemptible: the recipe checkpoints often) | "
                                "committed-1y | committed-3y (a committed-use discount: TPUs in the sources at hand)",
                                rich_help_panel=BUDGET),
    prices: Optional[Path] = typer.Option(None, help="YAML file overriding hardware prices/peaks", rich_help_panel=BUDGET),
    calibration: Optional[Path] = typer.Option(None, help="calibration file from clipa-report --calibrate",
                                               rich_help_panel=BUDGET),
    dataset: str = typer.Option("datacomp-1b", help=" | ".join(DATASETS), rich_help_panel=DATA),
    train_data: Optional[str] = typer.Option(None, "--train-data", help="webdataset shards: path, brace pattern "
                                             "('shards/{00000..41455}.tar'), list file or folder", rich_help_panel=DATA),
    train_samples: Optional[int] = typer.Option(None, min=1, help="samples in one pass of --train-data", rich_help_panel=DATA),
    val: Optional[str] = typer.Option(None, help="zero-shot evaluation folder (val/CLASS/*.jpg)", rich_help_panel=DATA),
    classnames: Optional[str] = typer.Option(None, help="file with one class name per line", rich_help_panel=DATA),
    templates: Optional[str] = typer.Option(None, help="file with one prompt template per line ('{}' = class)",
                                            rich_help_panel=DATA),
    objective: str = typer.Option("low", help="low: maximise the lower end of the predicted 80% interval (a plan "
                                  "outside the fitted data pays for its doubt); mean: the predicted top-1",
                                  rich_help_panel=SEARCH),
    risk: bool = typer.Option(False, "--risk", hidden=True, help="old spelling of --objective low (the default)",
                              rich_help_panel=SEARCH),
    out: Optional[Path] = typer.Option(None, help=f"where to write the recipe (default: {DEFAULT_OUT}); with --predict, "
                                       "the recipe with its predictions; with --pilot, the suite's folder (default: "
                                       "pilots/)", rich_help_panel=OUTPUT),
    name: Optional[str] = typer.Option(None, help="recipe name (default: derived from the plan)", rich_help_panel=OUTPUT),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables", rich_help_panel=OUTPUT),
    predict: Optional[Path] = typer.Option(None, help="predict an existing recipe instead of planning", rich_help_panel=MODES),
    fit_report: bool = typer.Option(False, "--fit-report", help="print the cost models' fits and plot them",
                                    rich_help_panel=MODES),
    plot: Optional[Path] = typer.Option(None, help="--fit-report: where to write the plot (default: fit_report.png)",
                                        rich_help_panel=MODES),
    pilot: bool = typer.Option(False, "--pilot", help="write a pilot suite instead: small copies of the target run "
                               "(--target, else the plan for this budget) costing at most --pilot-share of the budget",
                               rich_help_panel=MODES),
    target: Optional[Path] = typer.Option(None, help="--pilot: the recipe the pilots prepare (default: the plan "
                                          "for the budget; the shipped demo for --dataset demo)", rich_help_panel=MODES),
    pilot_share: float = typer.Option(0.10, help="--pilot: the pilots' total predicted cost is at most this share "
                                      "of the budget (the target's own cost when no budget is given)",
                                      rich_help_panel=MODES),
    version: bool = version_option(),
) -> None:
    given = {k for k in ctx.params if ctx.get_parameter_source(k).name not in ("DEFAULT", "DEFAULT_MAP")}
    # Piped output (logs, CI) is 100 columns wide: tables wider than that are printed on their side.
    console = Console() if sys.stdout.isatty() else Console(width=100)
    a = SimpleNamespace(**ctx.params)  # the flags by name, for the mode functions below
    if fit_report:
        _only(given, _FIT_REPORT_OK, "to --fit-report")
        from clipa.planner.fit_report import show

        show(console, plot or Path("fit_report.png"), as_json=as_json)
        return
    not_with("--plot", "plot" in given, "without --fit-report")
    for flag in ("target", "pilot_share"):
        not_with("--" + flag.replace("_", "-"), flag in given and not pilot, "without --pilot")
    if hw is not None and not hw.strip():
        raise UserError("--hw: empty; give a hardware name such as a100x8")
    from clipa.costmodels import calibration as calib_mod

    cal = calib_mod.load(calibration) if calibration else None
    if "train_data" in given and "dataset" not in given and target is None and predict is None:
        # The default dataset is DataComp-1B: left unsaid, a user's own shards were predicted as DataComp's.
        raise UserError("--train-data: say what these shards hold: --dataset datacomp-1b, laion-2b or laion-400m "
                        "(a copy of it: predictions rest on its published runs), or --dataset custom (your own "
                        "data: its pilots with --pilot, then a plan with --calibration)")
    if pilot:
        _pilot(console, a, given, cal)
    elif predict is not None:
        _predict(console, a, given, cal)
    else:
        _plan(ctx, console, a, given, cal)


def _pilot(console: Console, a: SimpleNamespace, given: set, cal) -> None:
    """--pilot: write the pilot suite of the target run."""
    _only(given, _PILOT_OK, "to --pilot")
    from clipa.cli import plan_pilot

    for flag, v in (("--budget", a.budget), ("--device-hours", a.device_hours), ("--pilot-share", a.pilot_share)):
        finite(flag, v)
    if a.dataset not in recipe_mod.DATASETS:  # custom too: pilots are how your own data gets a law
        raise UserError(f"--dataset: unknown dataset {a.dataset!r}; known: {', '.join(recipe_mod.DATASETS)}")
    plan_pilot.run(console, target=a.target, dataset=a.dataset, hw=a.hw, budget=a.budget, device_hours=a.device_hours,
                   share=a.pilot_share, prices=a.prices, cal=cal, out=a.out, as_json=a.as_json,
                   plan_kwargs={"deadline_days": a.deadline, "objective": _objective(a.objective, a.risk),
                                "pricing": a.pricing, "max_samples": _samples_cap(a)},
                   with_data=lambda r: _with_data(r, a))


def _predict(console: Console, a: SimpleNamespace, given: set, cal) -> None:
    """--predict: price an existing recipe (and write it with its predictions with --out)."""
    _only(given, _PREDICT_OK, "to --predict (it prices an existing recipe)")
    from clipa.costmodels.predict import for_hardware, predict_recipe, resolve_hardware

    rec = load_recipe(a.predict)
    hw = resolve_hardware(rec, a.hw, a.prices)
    rec = for_hardware(rec, hw)
    rec = rec.model_copy(update={"predictions": predict_recipe(rec, calibration=cal)})
    if a.out is not None:  # the recipe with these predictions: clipa-run keeps them for the report
        recipe_mod.dump(rec, a.out)
    from clipa.costmodels import throughput

    notes = [n for n in (throughput.uncalibrated_note(hw, cal),) if n]  # as a plan on that hardware says it
    _emit(console, rec, hw, str(a.predict), a.as_json, f"Predictions for {a.predict}", notes)
    unused = cal.unused_note(rec.hardware.name, rec.dataset.name) if cal is not None else None
    if unused:  # on stderr: --json keeps stdout to the JSON
        err_console.print(f"[yellow]warning:[/yellow] {escape(unused)}", soft_wrap=True)


def _plan(ctx: typer.Context, console: Console, a: SimpleNamespace, given: set, cal) -> None:
    """The plan for a budget on each --hw, the best one written as a recipe."""
    if a.budget is None and a.device_hours is None:
        raise UserError("give a budget: --budget DOLLARS or --device-hours HOURS")
    calibrated = cal is not None and cal.law(a.dataset) is not None
    if a.dataset in recipe_mod.DATASETS and a.dataset not in DATASETS and not calibrated:
        if cal is not None:
            raise UserError(f"--calibration {a.calibration}: no accuracy law for dataset {a.dataset!r} in it (it has: "
                            f"{', '.join(d for d in cal.datasets if cal.law(d) is not None) or 'none'}); "
                            f"fit one with clipa-report --calibrate on finished pilots of {a.dataset}")
        raise UserError(f"--dataset {a.dataset}: no published run on it to plan from: plan its pilots (clipa-plan "
                        f"--pilot --dataset {a.dataset} ...), fit them (clipa-report --calibrate), then plan with "
                        "--calibration FILE")
    if a.dataset not in DATASETS and not calibrated:
        raise UserError(f"--dataset: unknown dataset {a.dataset!r}; known: {', '.join(DATASETS)} (custom: with a "
                        "--calibration fitted on pilots of it)")
    for flag, v in (("--budget", a.budget), ("--device-hours", a.device_hours), ("--deadline", a.deadline)):
        finite(flag, v)
    from clipa.planner import compare

    # Several --hw names (a,b,c): the best plan on each, side by side; the recipe is the pick's.
    cmp = compare.plan_all(compare.hardware_list(a.hw), pricing=a.pricing, budget_usd=a.budget,
                           device_hours=a.device_hours, dataset=a.dataset, deadline_days=a.deadline,
                           objective=_objective(a.objective, a.risk), prices=a.prices, calibration=cal, name=a.name,
                           quiet=a.as_json, max_samples=_samples_cap(a))
    rec = _with_data(cmp.result.recipe, a)
    rec = rec.model_copy(update={"provenance": recipe_mod.Provenance(
        command=_command_line(ctx, given), clipa_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        budget_usd=a.budget, device_hours=a.device_hours, hardware=a.hw or "a100x8")})
    path = recipe_mod.dump(rec, a.out or DEFAULT_OUT, header=_todo(rec))
    if a.as_json:
        _plan_json(cmp, rec, path)
    else:
        _print_plan(console, a, cmp, rec, path)


def _plan_json(cmp, rec: recipe_mod.Recipe, path: Path) -> None:
    from clipa.planner import compare, present

    result = cmp.result
    obj = recipe_mod.round_figures(present.prediction_json(rec, str(path)))  # as the recipe file has them
    obj["alternatives"] = [present.plan_json(p) for p in result.search.alternatives]
    obj["pareto"] = [present.plan_json(p) for p in result.search.pareto]
    obj["notes"] = cmp.best.notes + _data_warnings(rec)
    obj.update(compare.price_json(cmp.best.hw))
    obj.update(present.plan_context_json(result))
    if len(cmp.options) > 1:
        obj["hardware_comparison"] = compare.json_rows(cmp)
    print(json.dumps(obj, indent=2))


def _print_plan(console: Console, a: SimpleNamespace, cmp, rec: recipe_mod.Recipe, path: Path) -> None:
    from clipa.planner import compare, present

    result = cmp.result
    present.print_tables(console, present.stage_table(rec, f"Best plan: {rec.name}"))
    present.print_plan_context(console, result, a.budget, a.device_hours)
    present.print_tables(
        console,
        present.plans_table(result.search.alternatives, "Top alternatives"),
        present.plans_table(present.thin(result.search.pareto, 12), "Accuracy/cost Pareto front (sampled)"),
    )
    if len(cmp.options) > 1:
        present.print_tables(console, compare.table(cmp, f"Best plan per hardware ({a.pricing} prices)"))
    console.print(compare.price_line(cmp.best.hw), soft_wrap=True, highlight=False, markup=False)
    for note in cmp.best.notes:
        console.print(note, soft_wrap=True, highlight=False)
    for warning in _data_warnings(rec):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    from clipa.backends.runstate import storage_line
    from clipa.launching import launch_command

    console.print(storage_line(rec), soft_wrap=True, highlight=False)
    if not rec.encoder.class_token:  # said before the money is spent, not at clipa-export
        console.print(f"OpenCLIP: clipa-export writes a model OpenCLIP loads only from a run trained with "
                      f"encoder: {{name: {rec.encoder.name}, class_token: true}} (one more image token); set it "
                      f"before clipa-run if you need that, then clipa-plan --predict {path} --out {path}",
                      soft_wrap=True, highlight=False, markup=False)
    todo = _todo(rec)
    if todo:
        console.print(f"recipe written to [bold]{escape(str(path))}[/bold]; before clipa-run: {todo}", soft_wrap=True)
    else:
        console.print(f"recipe written to [bold]{escape(str(path))}[/bold]; launch it with: "
                      f"{escape(launch_command(path, rec.hardware.name, rec.name))}",
                      soft_wrap=True)


def _objective(objective: str, risk: bool) -> str:
    if objective not in ("low", "mean"):
        raise UserError(f"--objective: {objective!r}; choose low or mean")
    if risk and objective == "mean":
        raise UserError("--risk is the old spelling of --objective low; it cannot go with --objective mean")
    return objective


def _only(given: set, allowed: set, mode: str) -> None:
    extra = sorted(given - allowed)
    if extra:
        not_with("--" + extra[0].replace("_", "-").replace("as-json", "json"), True, mode)


def _with_data(rec, a: SimpleNamespace):
    """The dataset paths the user gave, checked now (one line naming the flag) rather than at launch."""
    train, train_samples, val, classnames, templates = a.train_data, a.train_samples, a.val, a.classnames, a.templates
    if train is not None:
        from clipa.backends.data import webdataset_io

        try:
            webdataset_io.expand_shards(train)  # every shard's existence, as clipa-run checks it
        except UserError as e:
            raise UserError(f"--train-data: {e}") from None
    for flag, path in (("--val", val), ("--classnames", classnames), ("--templates", templates)):
        if path is not None and not Path(path).exists():
            raise UserError(f"{flag}: {path} not found")
    if val is not None and (classnames is None or templates is None):
        raise UserError("--val: zero-shot evaluation also needs --classnames and --templates")
    if val is None and (classnames or templates) is not None:
        raise UserError(f"{'--classnames' if classnames is not None else '--templates'}: needs --val, the folder "
                        "of images it is for (without it the run evaluates nothing)")
    if val is not None:  # as clipa-run checks it: class names against the folders, templates with '{}'
        from clipa.backends.data import zeroshot

        zeroshot.load_zeroshot(val, classnames, templates)
    update = {k: v for k, v in (("train", train), ("train_samples", train_samples), ("val", val),
                                ("classnames", classnames), ("templates", templates)) if v is not None}
    return rec.model_copy(update={"dataset": rec.dataset.model_copy(update=update)}) if update else rec


# CLIPA's LAION-400M runs saw 2.4e9 samples, "6 epochs" (costmodels/data/published_clipa_results.csv,
# from open_clip's docs/clipa.md): the most passes over one dataset behind the accuracy law.
PUBLISHED_EPOCHS = 6


def _data_warnings(rec) -> list[str]:
    """What the user's own data (--train-data without --val, --val of another measure than predicted,
    --train-samples) says about the plan."""
    ds, said = rec.dataset, []
    if ds.train is not None and ds.val is None:
        said.append("no --val: the run will not measure its zero-shot top-1, so clipa-report cannot hold it against "
                    "the prediction (add --val, --classnames and --templates)")
    if ds.val is not None:
        from clipa.backends.data import zeroshot

        said += filter(None, [datasets.eval_mismatch(ds.name, len(zeroshot.class_folders(Path(ds.val))))])
    if ds.train is not None:
        from clipa.backends.data.syntax_prep import untagged_note

        said += filter(None, [untagged_note(rec)])
    n, counted = ds.train_samples, ""
    if not n and ds.train is not None:
        n, counted = _estimated_samples(ds.train)
    if not n:
        return said
    passes = sum(st.samples for st in rec.stages) / n
    if passes <= PUBLISHED_EPOCHS:
        return said
    return said + [f"the plan passes over the {n:,} samples of dataset.train{counted} {passes:,.1f} times; the "
            f"accuracy law has no run with more than {PUBLISHED_EPOCHS} passes (CLIPA on LAION-400M), so expect less "
            "than predicted from repeated data"]


def _samples_cap(a: SimpleNamespace) -> Optional[float]:
    """The most samples (pre-training and fine-tune) the user's data allows a plan: PUBLISHED_EPOCHS passes
    over --train-samples (or the shards' estimated size), beyond which the accuracy law has no run; at least
    the search space's shortest pre-training (the plan then says how often it repeats the data). None
    without a size."""
    from clipa.planner.search_space import SAMPLES_GRID

    n = a.train_samples
    if n is None and a.train_data is not None:
        try:
            n = _estimated_samples(a.train_data)[0]
        except UserError as e:
            raise UserError(f"--train-data: {e}") from None
    return max(n * PUBLISHED_EPOCHS, SAMPLES_GRID[0]) if n else None


@functools.lru_cache(maxsize=1)  # the cap and the warnings both ask: the shards are listed once
def _estimated_samples(train: str) -> tuple[int, str]:
    """The samples in one pass of the shards, estimated from the first (reading its tar headers only, as
    clipa-run --dry-run does), and how: a user who gave no --train-samples still hears of a plan that
    repeats their data many times."""
    from clipa.backends.data import webdataset_io

    shards = webdataset_io.expand_shards(train)
    first = webdataset_io.shard_summary(shards[0]).count
    how = f" (about: {len(shards):,} shards x the first's {first:,}; --train-samples for the exact count)"
    return len(shards) * first, how if len(shards) > 1 else ""


def _todo(rec) -> str:
    """What a user must still fill in before clipa-run can launch the recipe ('' when nothing)."""
    if rec.dataset.train is None and rec.dataset.name != "demo":
        return ("set dataset.train to your webdataset shards (or plan again with --train-data; "
                "add --val/--classnames/--templates for zero-shot evaluation)")
    return ""


def _command_line(ctx: typer.Context, given: set) -> str:
    """The command as the user could type it again (the flags they gave, in canonical form)."""
    words = ["clipa-plan"]
    for p in ctx.command.params:
        if p.name in given and p.name != "version":
            flag = max(p.opts, key=len)
            v = ctx.params[p.name]
            words += [flag] if v is True else [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    return shlex.join(words)


def _emit(console: Console, rec, hw, path: str, as_json: bool, title: str, notes: list[str]) -> None:
    from clipa.planner import compare, present

    if as_json:
        obj = {**recipe_mod.round_figures(present.prediction_json(rec, path)), **compare.price_json(hw),
               "notes": notes}
        print(json.dumps(obj, indent=2))
    else:
        present.print_tables(console, present.stage_table(rec, title))
        for line in present.extrapolation_lines(rec.predictions.extrapolation):
            console.print(line, soft_wrap=True, highlight=False)
        console.print(compare.price_line(hw), soft_wrap=True, highlight=False, markup=False)
        for note in notes:
            console.print(note, soft_wrap=True, highlight=False, markup=False)


main = entry(app)

if __name__ == "__main__":
    main()
