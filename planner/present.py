"""Rich tables for plans and predictions, and the JSON object scripts rely on."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from clipa import recipe as recipe_mod
from clipa.costmodels.calibration import measured_on
from clipa.planner.cost_point import Plan


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 1 else f"{h * 60:,.1f} min"


def _samples(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:,.3g}{unit}"
    return f"{n:,.0f}"


def _usd(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def stage_table(rec: recipe_mod.Recipe, title: str) -> Table:
    pred = rec.predictions
    t = Table(title=title, title_justify="left")
    for col in ("stage", "px", "img tokens", "reduction", "text len", "text red.", "samples", "GFLOPs/sample",
                "device-h", "wall h", "$", "top-1 after"):
        t.add_column(col, justify="left" if col in ("stage", "reduction", "text red.") else "right")
    for st, sp in zip(rec.stages, pred.stages):
        red = st.image_reduction.kind + (f" {st.image_reduction.mask_ratio:.0%}" if st.image_reduction.mask_ratio else "")
        t.add_row(st.name, str(st.image_size), str(sp.image_tokens), red, str(st.text_len), st.text_reduction,
                  _samples(st.samples), f"{sp.train_flops_per_sample / 1e9:,.1f}", _hours(sp.device_hours),
                  _hours(sp.wall_hours), _usd(sp.cost_usd),
                  f"{sp.predicted_top1:.1f}" if sp.predicted_top1 is not None else "")
    lo, hi = pred.predicted_top1_interval
    wall = f"{pred.wall_hours / 24:,.2f} days" if pred.wall_hours >= 48 else f"{_hours(pred.wall_hours)} h".replace(" min h", " min")
    eval_set = measured_on(rec)
    t.caption = (f"predicted zero-shot top-1 ({eval_set}) {pred.predicted_top1:.1f}% [{lo:.1f}, {hi:.1f}]  |  "
                 f"{_hours(pred.device_hours).replace(' min', ' device-min')}{'' if pred.device_hours < 1 else ' device-h'}  |  "
                 f"{wall} wall  |  ${_usd(pred.cost_usd)} on {pred.hardware}")
    return t


def plans_table(plans: list[Plan], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("encoder", "pretrain px", "tokens", "img red.", "text", "samples", "fine-tune", "top-1 [interval]",
                "outside data", "device-h", "$"):
        t.add_column(col, justify="right" if col not in ("encoder", "img red.", "fine-tune", "text") else "left")
    for p in plans:
        pt = p.point
        t.add_row(pt.encoder, str(pt.image_size()), str(pt.side ** 2), pt.image_reduction,
                  f"{pt.text_len} {pt.text_reduction}", _samples(p.samples), pt.finetune,
                  f"{p.top1:.1f} [{p.low:.1f}, {p.high:.1f}]", _axes(p.extrapolation), f"{p.device_hours:,.0f}",
                  _usd(p.cost_usd))
    return t


def _axes(extrapolation: list[str]) -> str:
    return "inside" if not extrapolation else f"{len(extrapolation)} ax{'is' if len(extrapolation) == 1 else 'es'}"


OBJECTIVE_WORDS = {"low": "lower end of the 80% interval", "mean": "predicted top-1"}


def extrapolation_lines(extrapolation: list[str], what: str = "the prediction") -> list[str]:
    """The extrapolation notes of a prediction as lines to print under its table."""
    if not extrapolation:
        return [f"{what} lies inside the accuracy law's fitted data on every axis"]
    return [f"{what} extrapolates beyond the fitted data ({len(extrapolation)}):"] + [f"  - {e}" for e in extrapolation]


def binding_line(p: Plan, budget_text: str) -> str:
    """Which constraint stops the plan from training longer."""
    if p.binding == "objective":
        return ("binding constraint: the objective: the budget buys a longer run of this plan, but beyond the law's "
                "data its interval's low end is lower (--objective mean ranks plans by their mean)")
    words = {"budget": f"the budget ({budget_text})", "device-hours": f"the device-hour budget ({budget_text})",
             "deadline": "the deadline (more devices shorten the wall time: several GPU machines, --hw a100x32 for "
                         "four a100x8, or a larger TPU slice)", "dataset size": "the dataset's size (samples available)",
             "samples grid": "the search space's longest pre-training (the plan does not use all the budget)"}
    return f"binding constraint: {words.get(p.binding, p.binding)}: more pre-training samples would not fit"


def comparison_table(best: Plan, inside: Optional[Plan], nearest, objective: str, none_inside: str = "none fits"
                     ) -> Table:
    """The best plan beside the best plan inside the fitted data (``none_inside`` where there is none) and the
    nearest published run."""
    t = Table(title=f"Beside the best plan (objective: {OBJECTIVE_WORDS[objective]})", title_justify="left")
    for col in ("", "encoder", "px", "text", "samples", "fine-tune", "top-1 [80%]", "published", "outside data",
                "device-h", "$"):
        t.add_column(col, justify="left" if col in ("", "encoder", "text", "fine-tune") else "right")

    def row(label: str, p: Plan):
        pt = p.point
        t.add_row(label, pt.encoder, str(pt.image_size()), f"{pt.text_len} {pt.text_reduction}", _samples(p.samples),
                  pt.finetune, f"{p.top1:.1f} [{p.low:.1f}, {p.high:.1f}]", "", _axes(p.extrapolation),
                  f"{p.device_hours:,.0f}", _usd(p.cost_usd))

    row("best plan", best)
    if inside is None:
        t.add_row("best inside the data", none_inside, *[""] * 9)
    elif inside.point != best.point or inside.samples != best.samples:
        row("best inside the data", inside)
    if nearest is not None:
        rec = nearest.recipe
        st = rec.stages[0]
        ft = "+".join(f"{s.samples / 1e6:.0f}M@{s.image_size}" for s in rec.stages[1:]) or "none"
        pub = "" if nearest.published_top1 is None else f"{nearest.published_top1:.1f}"
        t.add_row("nearest published", rec.encoder.name, str(st.image_size), f"{st.text_len} {st.text_reduction}",
                  _samples(st.samples), ft, f"{nearest.predicted_top1:.1f} (law)", pub, "", f"{nearest.device_hours:,.0f}",
                  _usd(nearest.cost_usd))
        t.caption = (f"nearest published run: {nearest.name} (published top-1 {pub or 'n/a'}"
                     + (f", published cost ${nearest.published_cost_usd:,.0f}" if nearest.published_cost_usd else "")
                     + "); its device-h and $ as costed here on the plan's hardware")
    return t


def hours_json(device_hours: float) -> dict:
    """Device-hours under their name, and under gpu_hours: what clipa 0.1's --json called them, still
    read by scripts written against it."""
    return {"device_hours": device_hours, "gpu_hours": device_hours}


def published_json(nearest) -> Optional[dict]:
    if nearest is None:
        return None
    return {"name": nearest.name, "recipe": nearest.file, "dataset": nearest.dataset,
            "published_top1": nearest.published_top1, "published_cost_usd": nearest.published_cost_usd,
            "predicted_top1": nearest.predicted_top1,
            **hours_json(nearest.device_hours), "wall_hours": nearest.wall_hours, "cost_usd": nearest.cost_usd}


def prediction_json(rec: recipe_mod.Recipe, recipe_path: str | None) -> dict:
    pred = rec.predictions
    return {
        "predicted_top1": pred.predicted_top1,
        "predicted_top1_interval": list(pred.predicted_top1_interval),
        "top1_measured_on": measured_on(rec),
        **hours_json(pred.device_hours),
        "wall_hours": pred.wall_hours,
        "cost_usd": pred.cost_usd,
        "hardware": pred.hardware,
        "recipe": recipe_path,
        "stages": [
            {"name": s.name, "image_size": s.image_size, "image_tokens": s.image_tokens, "text_len": s.text_len,
             "samples": s.samples, "train_flops_per_sample": s.train_flops_per_sample, "train_flops": s.train_flops,
             **hours_json(s.device_hours), "wall_hours": s.wall_hours, "cost_usd": s.cost_usd,
             "predicted_top1": s.predicted_top1}
            for s in pred.stages
        ],
        "extrapolation": list(pred.extrapolation),
    }


def plan_json(p: Plan) -> dict:
    return {"encoder": p.point.encoder, "image_size": p.point.image_size(), "image_tokens": p.point.side ** 2,
            "image_reduction": p.point.image_reduction, "text_len": p.point.text_len,
            "text_reduction": p.point.text_reduction, "samples": p.samples, "finetune": p.point.finetune,
            "predicted_top1": p.top1, "predicted_top1_interval": [p.low, p.high], **hours_json(p.device_hours),
            "wall_hours": p.wall_hours, "cost_usd": p.cost_usd,
            "extrapolation": list(p.extrapolation)}


def thin(plans: list[Plan], n: int) -> list[Plan]:
    """At most ``n`` plans spread evenly along a list, keeping both ends."""
    if len(plans) <= n:
        return plans
    idx = sorted({round(i * (len(plans) - 1) / (n - 1)) for i in range(n)})
    return [plans[i] for i in idx]


def print_tables(console: Console, *tables) -> None:
    """Each table as is when it fits the console, else turned on its side (one column per row, as
    many rows side by side as fit), so a narrow terminal or a 100-column log never cuts digits."""
    for t in tables:
        if not t.row_count:  # e.g. no alternatives: a plan held to the pilots' encoder and tokens
            continue
        if _width(console, t) <= console.width:
            console.print(t)
        else:
            if t.title:
                console.print(t.title)
            rows = list(zip(*(list(c.cells) for c in t.columns)))
            per = len(rows)
            while per > 1 and _width(console, _transposed(t, rows[:per])) > console.width:
                per -= 1
            for i in range(0, len(rows), per):
                console.print(_transposed(t, rows[i:i + per]))
            if t.caption:
                console.print(t.caption)
        console.print()


def _width(console: Console, t: Table) -> int:
    return console.measure(t, options=console.options.update_width(10_000)).maximum


def _transposed(t: Table, rows: list) -> Table:
    """``rows`` of ``t`` with rows and columns swapped; their first cells become the headers."""
    cols = t.columns
    out = Table()
    out.add_column(str(cols[0].header), justify="left", no_wrap=True)
    for r in rows:
        out.add_column(str(r[0]), justify="right")
    for i, c in enumerate(cols[1:], start=1):
        out.add_row(str(c.header), *(str(r[i]) for r in rows))
    return out


def plan_context_json(result) -> dict:
    """What --json adds about the plan's standing: objective, binding constraint, the best plan
    inside the fitted data and the nearest published run (planner.run.PlanResult)."""
    search = result.search
    return {"objective": result.objective, "binding": search.best.binding,
            "best_inside": None if search.best_inside is None else plan_json(search.best_inside),
            "best_inside_none": search.none_inside if search.best_inside is None else None,
            "nearest_published": published_json(result.nearest)}


def print_plan_context(console: Console, result, budget_usd=None, device_hours=None) -> None:
    """Under the best plan's table: its extrapolation notes, the constraint that binds, and the table
    beside it (best plan inside the fitted data, nearest published run)."""
    search = result.search
    for line in extrapolation_lines(result.recipe.predictions.extrapolation, "the best plan's prediction"):
        console.print(line, soft_wrap=True, highlight=False)
    parts = [f"${budget_usd:,.0f}" if budget_usd is not None else "", f"{device_hours:,.0f} device-h" if device_hours else ""]
    console.print(binding_line(search.best, " and ".join(p for p in parts if p)), soft_wrap=True, highlight=False)
    console.print()
    print_tables(console, comparison_table(search.best, search.best_inside, result.nearest, result.objective,
                                           search.none_inside))

