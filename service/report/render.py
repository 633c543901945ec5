"""A tuning job's report: one self-contained HTML page (inline CSS and SVG, no script, no URL).

:func:`build_report` takes the job view (:func:`service.jobs.state.describe`), so the API
(``GET /v1/jobs/{id}/report``) and the CLI (``optpilot report JOB``, from a server or straight
from a database with ``--db``) produce the same page. It shows, answer first:

- the best value and the configuration ready to paste (``optimizers.create(...)``);
- the prior beside the tuning: candidates, scores, rationale, and whether the top pick won;
- the optimization history with the best so far, the values per optimizer (box + strip), the
  learning rate against the value per optimizer on a log axis, hyperparameter importances
  (Optuna's fANOVA on completed trials; too few trials are said, not plotted);
- the best configurations and every trial, each with its lr schedule (trials recorded before
  schedules show "not recorded": they trained with the workload's own).

NaN and infinities are never printed as numbers: missing and non-finite values show as "—".
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import optimizers
from service.jobs.state import ACTIVE, JobView
from service.report.plots import (
    PALETTE,
    Series,
    bar_chart,
    box_chart,
    esc,
    finite,
    number,
    xy_chart,
)
from tuner.contract import (
    OPTIMIZER_PARAM,
    SOURCE_HISTORY,
    best_first,
    better,
    retried_numbers,
    trial_hyperparameters,
    trial_optimizer,
    trial_reason,
    trial_schedule,
    trial_source,
)
from tuner.evidence.history import DEFAULT_NAMESPACE

MIN_IMPORTANCE_TRIALS = 5
TOP_CONFIGURATIONS = 5
MAX_TRIAL_ROWS = 2000
LOG_SPAN = 100.0  # values spanning more than this factor (all > 0) get a log axis
CHART_WIDTH = 520

# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A completed trial with a finite value."""

    number: int
    optimizer: str
    value: float
    hyperparameters: dict[str, float]
    schedule: dict[str, Any] | None = None


def completed_points(trials: Sequence[FrozenTrial]) -> list[Point]:
    out = []
    for t in trials:
        name = trial_optimizer(t)
        if t.state != TrialState.COMPLETE or name is None or not finite(t.value):
            continue
        assert t.value is not None
        hps = {str(k): float(v) for k, v in trial_hyperparameters(t).items()
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        out.append(Point(t.number, name, float(t.value), hps, trial_schedule(t)))
    return sorted(out, key=lambda p: p.number)


def ranked(points: Sequence[Point], direction: str) -> list[Point]:
    return sorted(points, key=lambda p: (best_first(p.value, direction), p.number))


def python_value(value: float) -> str:
    """A float literal with 4 significant digits that pastes into Python."""
    return repr(float(f"{value:.4g}"))


def create_call(optimizer: str, hyperparameters: Mapping[str, float]) -> str:
    args = "".join(f", {name}={python_value(v)}" for name, v in hyperparameters.items()
                   if finite(v))
    return f'optimizers.create("{optimizer}", model.parameters(){args})'


def schedule_text(schedule: Mapping[str, Any] | None) -> str:
    """A recorded schedule in words ("not recorded" for trials from before schedules)."""
    if schedule is None:
        return "not recorded (a trial from before schedules)"
    try:
        record = optimizers.Schedule.from_dict(schedule)
    except (ValueError, TypeError):
        return "unreadable: " + _hps_text(schedule)
    return f"{record.name}: {record.describe()}"


def scheduler_call(schedule: Mapping[str, Any]) -> str:
    """The line that builds a recorded schedule (its set fields), ready to paste."""
    fields = {k: v for k, v in schedule.items() if v is not None}
    return f"scheduler = optimizers.build_scheduler(opt, {fields!r}, total_steps)"


def _metric_of(workload: str | None) -> str:
    if workload is None:
        return "value"
    try:
        from tuner.workloads import get_workload

        return get_workload(workload).metric
    except (ValueError, LookupError):  # the workload's package is no longer installed
        return "value"


def use_log(values: Sequence[float]) -> bool:
    vals = [v for v in values if finite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= LOG_SPAN


@dataclass(frozen=True)
class Importance:
    """Importances of one group of trials, or why there are none."""

    group: str
    trials: int
    values: dict[str, float]
    note: str | None = None


def importances(points: Sequence[Point], direction: str,
                optimizer_names: Sequence[str]) -> list[Importance]:
    """fANOVA importances over completed trials, on the flat hyperparameters (``lr``, ...):
    across all trials (the optimizer choice included), then within each optimizer's trials.
    Only parameters that vary in a group count; groups with too few trials say so."""
    groups: list[tuple[str, list[Point]]] = [("all trials", list(points))]
    for name in optimizer_names:
        mine = [p for p in points if p.optimizer == name]
        if len({p.optimizer for p in points}) > 1 or not points:
            groups.append((name, mine))
    return [_importance(group, members, direction) for group, members in groups]


def _varying(members: Sequence[Point]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The parameters that vary across ``members`` (each present in all), with a distribution
    spanning the values seen (log scale when positive over a decade or more)."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    names = sorted({p.optimizer for p in members})
    if len(names) > 1:
        out[OPTIMIZER_PARAM] = optuna.distributions.CategoricalDistribution(names)
    shared = set.intersection(*(set(p.hyperparameters) for p in members)) if members else set()
    for hp in sorted(shared):
        values = [p.hyperparameters[hp] for p in members]
        lo, hi = min(values), max(values)
        if hi > lo:
            out[hp] = optuna.distributions.FloatDistribution(lo, hi, log=lo > 0 and hi >= 10 * lo)
    return out


def _importance(group: str, members: list[Point], direction: str) -> Importance:
    if len(members) < MIN_IMPORTANCE_TRIALS:
        return Importance(group, len(members), {},
                          f"needs at least {MIN_IMPORTANCE_TRIALS} completed trials "
                          f"(has {len(members)})")
    space = _varying(members)
    if len(space) < 2:
        only = f"only {next(iter(space))} varied" if space else "no parameter varied"
        return Importance(group, len(members), {},
                          f"{only}, so there is nothing to compare")
    key = (group, direction, tuple((p.number, p.value, tuple(sorted(p.hyperparameters.items())))
                                   for p in members))
    with _cache_lock:
        cached = _importance_cache.get(key)
    if cached is not None:
        return cached
    result = _fanova(group, members, space, direction)
    with _cache_lock:
        if len(_importance_cache) >= IMPORTANCE_CACHE_SIZE:
            _importance_cache.pop(next(iter(_importance_cache)))
        _importance_cache[key] = result
    return result


# fANOVA fits random forests (a few hundred ms): a report asked for again over unchanged trials
# (the dashboard refreshes running jobs) reuses the last answers.
IMPORTANCE_CACHE_SIZE = 64
_importance_cache: dict[Any, Importance] = {}
_cache_lock = threading.Lock()
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("optpilot_report_quiet",
                                                              default=False)


class _QuietScratchStudies(logging.Filter):
    """Drops Optuna's "A new study created in memory" line for the report's scratch studies."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet.get()


logging.getLogger("optuna.storages._in_memory").addFilter(_QuietScratchStudies())


def _fanova(group: str, members: list[Point],
            space: dict[str, optuna.distributions.BaseDistribution],
            direction: str) -> Importance:
    token = _quiet.set(True)
    try:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                    direction="minimize" if direction == "minimize" else "maximize",
                                    study_name="optpilot-report")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.add_trials([optuna.trial.create_trial(
                params={name: p.optimizer if name == OPTIMIZER_PARAM else p.hyperparameters[name]
                        for name in space},
                distributions=space, value=p.value) for p in members])
            raw = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=0))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return Importance(group, len(members), {}, f"could not be computed: {exc}")
    finally:
        _quiet.reset(token)
    values = {str(k): float(v) for k, v in raw.items() if finite(v)}
    if not values:
        return Importance(group, len(members), {}, "the values did not vary enough")
    return Importance(group, len(members), values)


# -- html ------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0;
       color: #222; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.sub { color: #555; margin: 0 0 14px; }
.card { background: #fff; border: 1px solid #e1e3e8; border-radius: 8px; padding: 14px 16px;
        margin: 10px 0; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
         gap: 6px 18px; }
.facts div { font-size: 13px; } .facts b { display: block; color: #666; font-weight: 500;
             font-size: 11px; text-transform: uppercase; letter-spacing: .04em; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; vertical-align: middle; background: #e8e8e8; }
.badge.completed { background: #dff3e4; color: #17642d; }
.badge.running, .badge.queued { background: #e3edfb; color: #1d4f91; }
.badge.failed { background: #fbe3e3; color: #8a1c1c; }
.badge.cancelled { background: #eee; color: #555; }
.verdict { font-size: 15px; }
.verdict.yes { border-left: 4px solid #3a9a57; } .verdict.no { border-left: 4px solid #d08a1e; }
.verdict.none { border-left: 4px solid #aaa; }
table { border-collapse: collapse; width: 100%; font-size: 13px; background: #fff; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eceef2;
         vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
            font-size: 12.5px; }
pre.code { background: #1f2430; color: #e6e6e6; padding: 10px 12px; border-radius: 6px;
           overflow-x: auto; margin: 6px 0; white-space: pre-wrap; word-break: break-all; }
td code { background: #f3f4f7; padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
         gap: 12px; }
.chart-card { background: #fff; border: 1px solid #e1e3e8; border-radius: 8px; padding: 6px;
              margin: 0; }
.chart-card.wide { grid-column: 1 / -1; }
.chart-card svg { max-width: 100%; height: auto; display: block; }
.caption { color: #666; font-size: 12px; margin: 4px 8px 6px; }
.note { color: #666; font-size: 13px; }
ul.rationale { margin: 4px 0 0 18px; padding: 0; font-size: 12.5px; color: #444; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: baseline; }
details summary { cursor: pointer; font-weight: 600; margin: 8px 0; }
footer { color: #777; font-size: 12px; margin-top: 32px; }
@media print { body { background: #fff; } .card, .chart-card { break-inside: avoid; } }
"""


def _fmt_time(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _hps_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={number(v) if isinstance(v, int | float) else v}"
                     for k, v in values.items())


def _chart(svg: str, caption: str, wide: bool = False) -> str:
    klass = "chart-card wide" if wide else "chart-card"
    return f'<figure class="{klass}">{svg}<figcaption class="caption">{esc(caption)}' \
           "</figcaption></figure>"


class _Report:
    def __init__(self, view: JobView, generated_at: datetime | None) -> None:
        self.view = view
        self.job = view.job
        self.summary = view.summary
        self.direction = view.summary.direction
        self.metric = _metric_of(self.job.workload)
        self.generated_at = generated_at or datetime.now(UTC)
        self.points = completed_points(view.trials)
        self.prior: list[dict[str, Any]] = list(self.job.prior or [])
        names = [str(c.get("optimizer")) for c in self.prior]
        seen = sorted({p.optimizer for p in self.points} - set(names))
        seen += sorted(set(self.summary.per_optimizer) - set(names) - set(seen))
        self.optimizers = names + seen
        self.colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(self.optimizers)}

    # -- pieces ----------------------------------------------------------------------------

    def better_word(self) -> str:
        return "lower" if self.direction == "minimize" else "higher"

    def _from_history(self) -> str:
        """Which past jobs the first trials came from, with the trials' numbers."""
        by_job: dict[str, list[int]] = {}
        for t in self.view.trials:
            source = trial_source(t)
            if source.startswith(f"{SOURCE_HISTORY}:"):
                by_job.setdefault(source.split(":", 1)[1], []).append(t.number)
        if not by_job:
            return "none"
        return "; ".join(f"job {job_id} (trial {', '.join(map(str, numbers))})"
                         for job_id, numbers in by_job.items())

    def header(self) -> str:
        job, s = self.job, self.summary
        task = job.task or {}
        what = f"workload <b>{esc(job.workload)}</b>" if job.workload else \
            "client-evaluated trials"
        params = task.get("num_parameters")
        params_text = f"{params:,}" if isinstance(params, int) else "—"
        facts = {
            "metric": f"{self.metric} ({self.better_word()} is better)",
            "model family": task.get("model_family", "—"),
            "task type": task.get("task_type", "—"),
            "parameters": params_text,
            "trials": f"{self.view.finished} of {job.n_trials} finished",
            "completed / pruned / failed": f"{s.completed} / {s.pruned} / {s.failed}",
            "running / waiting": f"{s.running} / {s.waiting}"
            if job.status in ACTIVE or not s.waiting
            else f"{s.running} / 0 ({s.waiting} never run: the job stopped)",
            "retried (lost workers)": str(self.view.retried),
            "pruner / seed": f"{job.pruner} / {job.seed if job.seed is not None else '—'}",
            "namespace": (job.namespace or DEFAULT_NAMESPACE)
            + ("" if job.use_history is not False else " (history off)"),
            "trials from history": self._from_history(),
            "created": _fmt_time(job.created_at),
            "started": _fmt_time(job.started_at),
            "duration": _duration(job.started_at, job.finished_at),
        }
        rows = "".join(f"<div><b>{esc(k)}</b>{esc(v)}</div>" for k, v in facts.items())
        error = f'<p class="note">error: {esc(job.error)}</p>' if job.error else ""
        return (f"<h1>Tuning report <code>{esc(job.id)}</code> "
                f'<span class="badge {esc(job.status)}">{esc(job.status)}</span></h1>'
                f'<p class="sub">{what}, study <code>{esc(job.study_name)}</code></p>'
                f'<div class="card facts">{rows}</div>{error}')

    def best(self) -> str:
        s = self.summary
        if s.best_optimizer is None or not finite(s.best_value):
            return ('<h2 id="best">Best so far</h2><div class="card note">No trial has '
                    "completed yet.</div>")
        call = create_call(s.best_optimizer, s.best_hyperparameters)
        code = f"import optimizers\n\nopt = {call}"
        if s.best_schedule is not None:
            code += f"\n{scheduler_call(s.best_schedule)}  # lr is its peak"
        return (f'<h2 id="best">Best so far</h2><div class="card"><div class="verdict">'
                f"{esc(self.metric)} <b>{esc(number(s.best_value))}</b> with "
                f"<b>{esc(s.best_optimizer)}</b> (trial {esc(s.best_trial)}); schedule "
                f"{esc(schedule_text(s.best_schedule))}</div>"
                f'<pre class="code">{esc(code)}</pre></div>')

    def verdict(self) -> tuple[str, str]:
        """(css class, html sentence) answering "did the prior's top pick win?"."""
        if not self.prior:
            return "none", "This job has no recorded prior."
        top = str(self.prior[0].get("optimizer"))
        winner = self.summary.best_optimizer
        if winner is None or not self.points:
            return "none", (f"The prior's top pick is <b>{esc(top)}</b>; no trial has completed "
                            "yet, so the tuning has not answered.")
        best_value = self.summary.best_value
        if winner == top:
            runner = self._runner_up(top)
            extra = ""
            if runner is not None:
                extra = (f" The runner-up, <b>{esc(runner[0])}</b>, reached "
                         f"{esc(number(runner[1]))}.")
            return "yes", (f"<b>Yes</b>: the prior's top pick, <b>{esc(top)}</b>, found the best "
                           f"{esc(self.metric)} ({esc(number(best_value))}).{extra}")
        top_best = self.summary.per_optimizer.get(top)
        top_value = top_best.best_value if top_best is not None else None
        rank = next((i + 1 for i, c in enumerate(self.prior) if c.get("optimizer") == winner),
                    None)
        where = f"ranked #{rank} by the prior" if rank else "not among the prior's picks"
        if finite(top_value):
            against = f"{esc(top)}'s best was {esc(number(top_value))}"
        else:
            against = f"{esc(top)} completed no trial"
        return "no", (f"<b>No</b>: the prior ranked <b>{esc(top)}</b> first, but "
                      f"<b>{esc(winner)}</b> ({where}) found the best {esc(self.metric)}: "
                      f"{esc(number(best_value))}; {against}.")

    def _runner_up(self, winner: str) -> tuple[str, float] | None:
        others = [(name, o.best_value) for name, o in self.summary.per_optimizer.items()
                  if name != winner and o.best_value is not None and finite(o.best_value)]
        if not others:
            return None
        name, value = min(others, key=lambda kv: best_first(kv[1], self.direction))
        assert value is not None
        return name, value

    def prior_vs_tuning(self) -> str:
        klass, sentence = self.verdict()
        bests = {name: o.best_value for name, o in self.summary.per_optimizer.items()
                 if o.best_value is not None and finite(o.best_value)}
        order = sorted(bests, key=lambda n: best_first(bests[n], self.direction))
        tuned_rank = {name: i + 1 for i, name in enumerate(order)}
        rows = []
        listed = [str(c.get("optimizer")) for c in self.prior]
        extra = [n for n in self.optimizers if n not in listed]
        for i, name in enumerate(listed + extra):
            cand = self.prior[i] if i < len(self.prior) else {}
            o = self.summary.per_optimizer.get(name)
            hp = cand.get("hyperparameters", {}) or {}
            lr = hp.get("lr") if isinstance(hp, dict) else None
            lr_text = "—"
            if isinstance(lr, dict):
                lr_text = (f"{number(lr.get('default'))} "
                           f"<span class='note'>[{number(lr.get('low'))}, "
                           f"{number(lr.get('high'))}]</span>")
            rationale = "".join(f"<li>{esc(line)}</li>" for line in cand.get("rationale", []))
            refs = "; ".join(str(r) for r in cand.get("references", []))
            if refs:
                rationale += f"<li><i>{esc(refs)}</i></li>"
            score = cand.get("score")
            rows.append(
                "<tr>"
                f'<td class="num">{i + 1 if cand else "—"}</td>'
                f'<td><span class="swatch" style="background:{self.colors.get(name, "#999")}">'
                f"</span><b>{esc(name)}</b>"
                f'{"<ul class=rationale>" + rationale + "</ul>" if rationale else ""}</td>'
                f'<td class="num">{esc(number(score, 3)) if cand else "—"}</td>'
                f'<td class="num">{lr_text}</td>'
                f'<td class="num">{o.trials if o else 0}</td>'
                f'<td class="num">{o.completed if o else 0}</td>'
                f'<td class="num">{esc(number(o.best_value if o else None))}</td>'
                f'<td class="num">{tuned_rank.get(name, "—")}</td>'
                "</tr>")
        table = ("<table><thead><tr><th class=num>prior rank</th><th>optimizer and rationale</th>"
                 "<th class=num>prior score</th><th class=num>default lr [range]</th>"
                 "<th class=num>trials</th><th class=num>completed</th>"
                 f"<th class=num>best {esc(self.metric)}</th><th class=num>tuned rank</th>"
                 f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        return (f'<h2 id="prior">The recommendation vs what the tuning found</h2>'
                f'<div class="card verdict {klass}">{sentence}</div>{table}')

    def charts(self) -> str:
        pts = self.points
        values = [p.value for p in pts]
        y_log = use_log(values)
        scale = " (log axis)" if y_log else ""
        # 1. history + best so far
        series = []
        for name in self.optimizers:
            mine = [p for p in pts if p.optimizer == name]
            if mine:
                series.append(Series(name, [(p.number, p.value) for p in mine], "scatter",
                                     self.colors[name],
                                     [f"trial {p.number} ({name}): {number(p.value)}"
                                      for p in mine]))
        best_line: list[tuple[float, float]] = []
        best: float | None = None
        for p in pts:
            if best is None or better(p.value, best, self.direction):
                best = p.value
            best_line.append((p.number, best))
        series.append(Series("best so far", best_line, "step", "#222"))
        history = xy_chart(series, title="Optimization history", x_label="trial",
                           y_label=f"{self.metric}{scale}", y_log=y_log, width=1040,
                           height=380,
                           empty_message="no completed trial yet")
        # 2. values per optimizer
        groups = {name: [(p.value, f"trial {p.number}: {number(p.value)}")
                         for p in pts if p.optimizer == name]
                  for name in self.optimizers}
        boxes = box_chart(groups, title=f"{self.metric.capitalize()} per optimizer",
                          y_label=f"{self.metric}{scale}", y_log=y_log, colors=self.colors,
                          width=CHART_WIDTH,
                          empty_message="no completed trial yet")
        # 3. learning rate vs value
        lr_series = []
        for name in self.optimizers:
            mine = [p for p in pts if p.optimizer == name and "lr" in p.hyperparameters]
            if mine:
                lr_series.append(Series(name, [(p.hyperparameters["lr"], p.value) for p in mine],
                                        "scatter", self.colors[name],
                                        [f"trial {p.number}: lr {number(p.hyperparameters['lr'])}"
                                         f" → {number(p.value)}" for p in mine]))
        lr_chart = xy_chart(lr_series, title="Learning rate vs value", x_label="lr (log axis)",
                            y_label=f"{self.metric}{scale}", x_log=True, y_log=y_log,
                            width=CHART_WIDTH,
                            empty_message="no completed trial with a learning rate yet")
        not_shown = sum(1 for t in self.view.trials if t.state != TrialState.COMPLETE)
        hidden = f"; {not_shown} unfinished, pruned or failed trials are not drawn" \
            if not_shown else ""
        return (
            '<h2 id="plots">Plots</h2><div class="grid2">'
            + _chart(history, f"Completed trials by number, coloured by optimizer; the step line "
                     f"is the best {self.metric} so far ({self.better_word()} is better)"
                     f"{hidden}.", wide=True)
            + _chart(boxes, "Each completed trial's value (points) over the quartiles of its "
                     "optimizer (box, median line, whiskers to 1.5 IQR).")
            + _chart(lr_chart, "Learning rate against the value reached, per optimizer: where "
                     "each optimizer's good learning rates lie.")
            + "</div>")

    def importance_section(self) -> str:
        groups = importances(self.points, self.direction, self.optimizers)
        charts, notes = [], []
        for g in groups:
            if g.values:
                charts.append(_chart(
                    bar_chart(g.values, title=f"Importance: {g.group}",
                              x_label="fANOVA importance (sums to 1)",
                              bar_color=self.colors.get(g.group, PALETTE[0]),
                              width=CHART_WIDTH),
                    f"{g.group}: {g.trials} completed trials."))
            else:
                notes.append(f"<li><b>{esc(g.group)}</b>: {esc(g.note or 'none')}</li>")
        body = f'<div class="grid2">{"".join(charts)}</div>' if charts else ""
        if notes:
            body += f'<ul class="note">{"".join(notes)}</ul>'
        if not groups:
            body = '<p class="note">No completed trials yet.</p>'
        return ('<h2 id="importance">Hyperparameter importance</h2>'
                '<p class="note">How much of the variation in the value each parameter explains '
                "(Optuna's fANOVA over completed trials, on the hyperparameters that varied): "
                "across all trials, the optimizer choice included, then within each optimizer's "
                f"own trials.</p>{body}")

    def configurations(self) -> str:
        order = ranked(self.points, self.direction)
        chosen = order[:TOP_CONFIGURATIONS]
        for name in self.optimizers:
            own = next((p for p in order if p.optimizer == name), None)
            if own is not None and own not in chosen:
                chosen.append(own)
        rank = {p.number: i + 1 for i, p in enumerate(order)}
        rows = []
        for p in sorted(chosen, key=lambda q: rank[q.number]):
            rows.append(
                f'<tr><td class="num">{rank[p.number]}</td><td class="num">{p.number}</td>'
                f'<td class="nowrap"><span class="swatch" '
                f'style="background:{self.colors.get(p.optimizer)}"></span>{esc(p.optimizer)}</td>'
                f'<td class="num">{esc(number(p.value))}</td>'
                f"<td><code>{esc(create_call(p.optimizer, p.hyperparameters))}</code></td>"
                f"<td>{esc(schedule_text(p.schedule))}</td></tr>")
        if not rows:
            return ('<h2 id="configs">Best configurations</h2><p class="note">No completed '
                    "trial yet.</p>")
        return ('<h2 id="configs">Best configurations</h2>'
                f'<p class="note">The {TOP_CONFIGURATIONS} best trials, plus the best of every '
                "other optimizer, ready to paste (<code>import optimizers</code>).</p>"
                "<table><thead><tr><th class=num>rank</th><th class=num>trial</th>"
                f"<th>optimizer</th><th class=num>{esc(self.metric)}</th><th>code</th>"
                "<th>schedule (lr is its peak)</th></tr>"
                f"</thead><tbody>{''.join(rows)}</tbody></table>")

    def trials_table(self) -> str:
        trials = sorted(self.view.trials, key=lambda t: t.number)
        retried = retried_numbers(trials)
        rows = []
        for t in trials[:MAX_TRIAL_ROWS]:
            state = t.state.name.lower() + (" (retried)" if t.number in retried else "")
            value = t.value if t.state == TrialState.COMPLETE else None
            hps = trial_hyperparameters(t)
            rows.append(f'<tr><td class="num">{t.number}</td><td>{esc(state)}</td>'
                        f'<td class="num">{esc(number(value))}</td>'
                        f"<td>{esc(trial_optimizer(t) or '—')}</td><td>{esc(_hps_text(hps))}</td>"
                        f"<td>{esc(schedule_text(trial_schedule(t)))}</td>"
                        f"<td>{esc(trial_source(t))}</td>"
                        f"<td>{esc(trial_reason(t) or '')}</td></tr>")
        more = len(trials) - MAX_TRIAL_ROWS
        tail = f'<p class="note">… and {more} more trials.</p>' if more > 0 else ""
        return (f'<details><summary id="trials">All trials ({len(trials)})</summary>'
                "<table><thead><tr><th class=num>#</th><th>state</th>"
                f"<th class=num>{esc(self.metric)}</th><th>optimizer</th>"
                "<th>hyperparameters</th><th>schedule</th><th>source</th><th>reason</th></tr>"
                "</thead>"
                f"<tbody>{''.join(rows)}</tbody></table>{tail}</details>")

    def render(self) -> str:
        title = f"optpilot report {self.job.id}"
        body = "".join([
            self.header(), self.best(), self.prior_vs_tuning(), self.charts(),
            self.importance_section(), self.configurations(), self.trials_table(),
            f"<footer>Generated {esc(_fmt_time(self.generated_at))} by optpilot. The study "
            f"<code>{esc(self.job.study_name)}</code> is a plain Optuna study: "
            "<code>optuna-dashboard &lt;database URL&gt;</code> opens it too.</footer>",
        ])
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{esc(title)}</title><style>{CSS}</style></head>"
                f"<body><main>{body}</main></body></html>\n")


def build_report(view: JobView, *, generated_at: datetime | None = None) -> str:
    """The job's report as one self-contained HTML document (UTF-8 text)."""
    return _Report(view, generated_at).render()
