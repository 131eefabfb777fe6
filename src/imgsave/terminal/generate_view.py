"""What `generate` reports, and how it shows it: one project's result, a run over several
(totals plus each project's own object), and a `--batch` run. Each gives its JSON, its exit code
and its summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgsave.adapters.imageapi.client import add_usage
from imgsave.adapters.imageapi.pace import PaceReport
from imgsave.core.cost import BATCH, SYNC, Cap, Pricing, amount_json, money
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name
from imgsave.errors import (
    EXIT_CANNOT_WORK,
    EXIT_FINDINGS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ImgsaveError,
)
from imgsave.operations.batches import Submitted
from imgsave.operations.execution import Tally
from imgsave.operations.generating import BatchPlan, ProjectPlan
from imgsave.operations.settled import Settled
from imgsave.terminal.consoles import (
    json_text,
    printable,
    shown,
    stdout_console,
    write_stdout,
)

if TYPE_CHECKING:
    from rich.console import Console


# What `generate` reports: one project's result, and a run over several (totals plus each
# project's own object). Each renders itself and gives its JSON and exit code.


@dataclass
class GenerateResult:
    project: str
    run: str
    tally: Tally = field(default_factory=Tally, metadata=NOT_IN_JSON)
    skipped_scenes: list[int] = field(default_factory=list)
    unprompted_scenes: list[int] = field(default_factory=list)
    # Scenes another run (this host or another) held: skipped, that run reports them.
    held_scenes: list[int] = field(default_factory=list)
    # Of those, the ones whose holder stopped extending its claims (a run that died on another
    # host): nobody is working on them until their claims expire, so they are a finding.
    stalled_scenes: list[int] = field(default_factory=list)
    # Scenes whose missing images are all on their way already (a job, a batch): not bought.
    pending_scenes: list[int] = field(default_factory=list)
    # Paid images an earlier run received and never saved, saved now instead of paid again.
    recovered: int = 0
    # Jobs an earlier run paid for and never saw end, polled again (job APIs).
    jobs_resumed: int = 0
    # The APIs settling could not read (exit 3).
    unreadable: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    log_path: str | None = field(default=None, metadata=json_name("log"))
    # The run's pace; only a run of one project carries it (several: the run's result does).
    pace: PaceReport | None = field(default=None, metadata=NOT_IN_JSON)
    # Set when the project could not be worked on at all (not found, malformed, ...).
    refused_with: int | None = field(default=None, metadata=NOT_IN_JSON)
    # --strict: a scene without a prompt is a finding (exit 1). Without it such scenes are
    # reported and the exit code ignores them: nothing imgsave does can give them a prompt,
    # and a cron run every 15 minutes must not alert on them forever.
    strict: bool = field(default=False, metadata=NOT_IN_JSON)
    # What an image costs: the JSON's `cost` (None: a library caller that did not ask).
    pricing: Pricing | None = field(default=None, metadata=NOT_IN_JSON)

    # The engine's counts, under the names the JSON contract gives them.
    @property
    def requested(self) -> int:
        return self.tally.requested

    @property
    def saved(self) -> int:
        return self.tally.saved

    @property
    def failed(self) -> int:
        return self.tally.failed

    def failure(self, exc: ImgsaveError) -> None:
        """The project could not be worked on; the run goes on with the others."""
        self.tally.fatal = str(exc)
        self.refused_with = exc.exit_code

    def absorb(self, settled: Settled) -> None:
        """What settling did before the plan: this project's share of the run's JSON."""
        self.log_path = self.log_path or settled.log
        self.recovered += settled.recovered
        self.jobs_resumed += settled.jobs_resumed
        self.tally.jobs_lost += settled.lost
        self.unreadable += settled.unreadable
        self.tally.errors[:0] = settled.errors + settled.unreadable

    @property
    def exit_code(self) -> int:
        if self.refused_with is not None:
            return self.refused_with
        if self.unreadable:  # nothing seen is not nothing found
            return EXIT_CANNOT_WORK
        code = self.tally.exit_code
        unprompted = self.strict and self.unprompted_scenes
        finding = unprompted or self.stalled_scenes or self.tally.jobs_lost
        return max(code, EXIT_FINDINGS) if finding and code == 0 else code

    def stderr_lines(self) -> list[str]:
        fatal = [self.tally.fatal] if self.tally.fatal else []
        return fatal + self.tally.unlogged_lines()

    def to_json(self) -> dict[str, object]:
        pace = {"pace": pace_json(self.pace)} if self.pace else {}
        cost = {"cost": self.pricing.cost_json(self.tally.sent, SYNC)} if self.pricing else {}
        return {**fields_json(self), **self.tally.to_json(), **pace, **cost}

    def render(self, console: Console) -> None:
        console.print(shown(self.summary()))

    def summary(self) -> str:
        t = self.tally
        if self.refused_with is not None:
            return f"project {self.project}: not worked on: {t.fatal}"
        head = f"project {self.project}: {t.saved} of {t.requested} images saved"
        if t.requested:
            head += f" in {t.transactions} transaction{'s' if t.transactions != 1 else ''}"
        spent = cost_text(self.pricing, t.sent, SYNC)
        refused = ", ".join(f"{n} {why}" for why, n in t.refusals.most_common())
        in_log = f" ({t.failed_in_log} in the log for `imgsave repair`)" if t.failed_in_log else ""
        tokens, pace = tokens_text(t.usage), pace_part(self.pace)
        return summary_line(
            head,
            (t.received != t.requested and t.received, f"{t.received} received"),
            (tokens, tokens),
            (spent, f"estimated {spent}"),
            (t.refusals, f"refused: {refused}"),
            (self.jobs_resumed, f"{self.jobs_resumed} jobs of an earlier run polled again"),
            (t.jobs_lost, f"{t.jobs_lost} jobs paid for and lost (their results were gone)"),
            (t.spooled, f"{t.spooled} kept in the spool for `imgsave repair`"),
            (t.provisional, f"{t.provisional} saved as the provider's URL (run `imgsave rehost`)"),
            (t.possibly_billed_retries,
             f"{t.possibly_billed_retries} retries the provider may have billed"),
            (t.failed, f"{t.failed} failed{in_log}"),
            (t.duplicates,
             f"{t.duplicates} answered with a URL the scene already held (not saved)"),
            (self.recovered, f"{self.recovered} received by an earlier run and saved now"),
            (self.skipped_scenes, f"{len(self.skipped_scenes)} scenes already complete"),
            (self.unprompted_scenes, f"{len(self.unprompted_scenes)} scenes without a prompt"),
            (self.held_scenes,
             f"{len(self.held_scenes)} scenes held by another run (skipped)"),
            (self.stalled_scenes, f"{len(self.stalled_scenes)} of them by a run that stopped"),
            (t.not_requested, f"{t.not_requested} not requested"),
            (t.abandoned,
             f"{t.abandoned} abandoned at the second Ctrl-C (may have been billed)"),
            (t.interrupted, "interrupted"),
            (t.fatal, f"stopped: {t.fatal}"),
            (t.log_error, f"stopped: {t.log_error}"),
            (pace, pace),
            run=self.run,
        )  # fmt: skip


def summary_line(head: str, *parts: tuple[object, str], run: str) -> str:
    """A result's one line: `head`, then each part's text whose condition holds, in order."""
    return ", ".join([head, *(text for shown, text in parts if shown)]) + f" (run {run})"


def tokens_text(usage: Mapping[str, int]) -> str:
    """The tokens an image API counted, for people ("" when it counted none)."""
    tokens = usage.get("total_tokens")
    return f"{tokens:,} tokens" if tokens else ""


def pace_part(pace: PaceReport | None) -> str:
    """The run's pace, for people, when it was asked for one or was throttled ("" else)."""
    return pace_text(pace) if pace and (pace.asked or pace.throttled) else ""


def pace_json(pace: PaceReport) -> dict[str, object]:
    return {
        "asked_per_minute": pace.asked,
        "achieved_per_minute": pace.achieved,
        "requests": pace.requests,
        "throttled": pace.throttled,
    }


def pace_text(pace: PaceReport) -> str:
    asked = f" (asked {pace.asked:g}/min)" if pace.asked else ""
    achieved = f"{pace.achieved:g} requests/min{asked}, " if pace.achieved else ""
    return f"{achieved}{pace.throttled} throttled (429)"


@dataclass
class ManyResult:
    """A run over several projects: totals, and each project's own result object."""

    run: str
    project: None = None  # the single-project key, kept so one parser reads both shapes
    requested: int = 0
    saved: int = 0
    failed: int = 0
    not_requested: int = 0
    abandoned: int = 0
    # Scenes skipped, counted over every project (each project's object lists its own).
    skipped_scenes: int = 0
    unprompted_scenes: int = 0
    held_scenes: int = 0
    stalled_scenes: int = 0
    pending_scenes: int = 0
    recovered: int = 0
    transactions: int = 0
    possibly_billed_retries: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    jobs_resumed: int = 0
    jobs_lost: int = 0
    # Projects named or found that the run never started: it stopped, or --max-images ran out.
    projects_not_started: int = 0
    stopped: str | None = None
    interrupted: bool = False
    pace: PaceReport | None = field(default=None, metadata=NOT_IN_JSON)
    projects: list[dict[str, object]] = field(default_factory=list)
    # The APIs settling could not read (exit 3).
    unreadable: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    errors: list[str] = field(default_factory=list)
    # -q: one summary line, not one per unfinished project.
    quiet: bool = field(default=False, metadata=NOT_IN_JSON)
    # Images asked of the image API, and what one costs: the JSON's `cost`.
    sent: int = field(default=0, metadata=NOT_IN_JSON)
    pricing: Pricing | None = field(default=None, metadata=NOT_IN_JSON)
    _worst: int = field(default=0, metadata=NOT_IN_JSON)
    _lines: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    _stderr: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)

    def add(self, result: GenerateResult) -> None:
        """Fold one finished project in; only its JSON object and summary line are kept."""
        t = result.tally
        if result.refused_with is None and (t.fatal or t.log_error) and not self.stopped:
            # The image API refused, or the log stopped taking writes: that stopped the run.
            self.stopped = t.fatal or t.log_error
        self.projects.append(result.to_json())
        self.requested += t.requested
        self.sent += t.sent
        self.saved += t.saved
        self.failed += t.failed
        self.not_requested += t.not_requested
        self.abandoned += t.abandoned
        self.skipped_scenes += len(result.skipped_scenes)
        self.unprompted_scenes += len(result.unprompted_scenes)
        self.held_scenes += len(result.held_scenes)
        self.stalled_scenes += len(result.stalled_scenes)
        self.pending_scenes += len(result.pending_scenes)
        self.recovered += result.recovered
        self.transactions += t.transactions
        self.possibly_billed_retries += t.possibly_billed_retries
        add_usage(self.usage, t.usage)
        self.refusals.update(t.refusals)
        self.jobs_resumed += result.jobs_resumed
        self.jobs_lost += t.jobs_lost
        code = result.exit_code
        self._worst = max(self._worst, code)
        if code or result.held_scenes:
            self._lines.append(result.summary())
        self._stderr += result.tally.unlogged_lines()

    def absorb(self, settled: Settled) -> None:
        """What settling did before the plan, for every project of the run."""
        self.recovered += settled.recovered
        self.jobs_resumed += settled.jobs_resumed
        self.jobs_lost += settled.lost
        self.unreadable += settled.unreadable
        self.errors += settled.errors + settled.unreadable

    @property
    def exit_code(self) -> int:
        if self.stopped or self.unreadable:
            return EXIT_CANNOT_WORK
        if self.interrupted:
            return EXIT_INTERRUPTED
        short = self.projects_not_started or self.not_requested or self.jobs_lost
        if self._worst == 0 and short:
            return EXIT_FINDINGS
        return self._worst

    def stderr_lines(self) -> list[str]:
        return ([self.stopped] if self.stopped else []) + self._stderr

    def to_json(self) -> dict[str, object]:
        pace = {"pace": pace_json(self.pace)} if self.pace else {}
        cost = {"cost": self.pricing.cost_json(self.sent, SYNC)} if self.pricing else {}
        return {**fields_json(self), **pace, **cost}

    def render(self, console: Console) -> None:
        for line in () if self.quiet else self._lines:
            console.print(shown(line))
        n, tx = len(self.projects), self.transactions
        head = (
            f"generate: {n} project{'' if n == 1 else 's'}, {self.saved} of {self.requested} "
            f"images saved in {tx} transaction{'' if tx == 1 else 's'}"
        )
        spent = cost_text(self.pricing, self.sent, SYNC)
        tokens, pace = tokens_text(self.usage), pace_part(self.pace)
        line = summary_line(
            head,
            (self.failed, f"{self.failed} failed"),
            (self.not_requested, f"{self.not_requested} not requested"),
            (self.abandoned,
             f"{self.abandoned} abandoned at the second Ctrl-C (may have been billed)"),
            (self.projects_not_started, f"{self.projects_not_started} projects not started"),
            (self.held_scenes, f"{self.held_scenes} scenes held by other runs"),
            (self.stalled_scenes, f"{self.stalled_scenes} of them by runs that stopped"),
            (self.unprompted_scenes, f"{self.unprompted_scenes} scenes without a prompt"),
            (self.recovered, f"{self.recovered} received by an earlier run and saved now"),
            (tokens, tokens),
            (spent, f"estimated {spent}"),
            (self.possibly_billed_retries,
             f"{self.possibly_billed_retries} retries the provider may have billed"),
            (self.interrupted, "interrupted"),
            (self.stopped, f"stopped: {self.stopped}"),
            (pace, pace),
            run=self.run,
        )  # fmt: skip
        console.print(shown(line))


@dataclass
class BatchRunResult:
    """A `generate --batch` run: what it collected (settling), what it submitted, what is still
    running. `skipped_scenes` and `held_scenes` are counts here, as in a run over several
    projects."""

    run: str
    project: str | None
    settled: Settled = field(default_factory=Settled)
    submitted: Submitted = field(default_factory=Submitted)
    skipped_scenes: int = 0
    unprompted_scenes: int = 0
    held_scenes: int = 0
    pending_scenes: int = 0
    # Images the plan wanted beyond the cap (--max-images, --max-cost): not submitted.
    capped: int = 0
    cap: Cap = field(default_factory=lambda: Cap(None), metadata=NOT_IN_JSON)
    pricing: Pricing | None = field(default=None, metadata=NOT_IN_JSON)
    # --strict: a scene without a prompt is a finding, as in a synchronous run.
    strict: bool = field(default=False, metadata=NOT_IN_JSON)
    # Batches still running (submitted now, or earlier).
    pending: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, plan: BatchPlan) -> None:
        """The scenes the submission's plan left out, and why, in this result's counts."""
        self.skipped_scenes, self.held_scenes = plan.skipped_scenes, plan.held_scenes
        self.pending_scenes, self.capped = plan.pending_scenes, plan.capped
        self.unprompted_scenes = plan.unprompted_scenes

    @property
    def exit_code(self) -> int:
        s = self.settled
        if s.unreadable:
            return EXIT_CANNOT_WORK
        unprompted = self.strict and self.unprompted_scenes
        missing = s.failed or s.lost or s.uncollected or self.capped or self.submitted.errors
        missing = missing or unprompted
        return EXIT_FINDINGS if missing else 0

    def stderr_lines(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, object]:
        s, sub = self.settled, self.submitted
        return {
            "project": self.project,
            "run": self.run,
            "batch": True,
            "requested": sub.requested,
            "saved": s.recovered,
            "failed": s.failed,
            "skipped_scenes": self.skipped_scenes,
            "unprompted_scenes": self.unprompted_scenes,
            "held_scenes": self.held_scenes,
            "pending_scenes": self.pending_scenes,
            "recovered": s.recovered,
            "jobs_resumed": s.jobs_resumed,
            "lost": s.lost,
            "capped": self.capped,
            "in_batches": sub.in_batches,
            "batches": {"submitted": sub.submitted, "collected": s.collected,
                        "pending": self.pending},
            "per_batch": s.per_batch,
            "refusals": dict(s.refusals),
            "usage": s.usage,
            "possibly_billed_retries": 0,
            "errors": self.errors + s.errors + s.unreadable + sub.errors,
            **({"cost": self.pricing.cost_json(sub.requested, BATCH)} if self.pricing else {}),
        }  # fmt: skip

    def render(self, console: Console) -> None:
        s, sub = self.settled, self.submitted
        head = (
            f"generate --batch: {len(sub.submitted)} batches submitted ({sub.in_batches} "
            f"images), {len(s.collected)} collected ({s.recovered} images saved)"
        )
        spent = cost_text(self.pricing, sub.requested, BATCH)
        tokens = tokens_text(s.usage)
        line = summary_line(
            head,
            (self.pending, f"{len(self.pending)} still running"),
            (s.failed, f"{s.failed} failed"),
            (s.refusals, ", ".join(f"{n} {why}" for why, n in s.refusals.items())),
            (s.lost, f"{s.lost} paid for and lost (output expired)"),
            (self.capped, f"{self.capped} not submitted ({self.cap})"),
            (self.held_scenes, f"{self.held_scenes} scenes held by other runs"),
            (tokens, tokens),
            (spent, f"submitted for an estimated {spent}"),
            run=self.run,
        )
        for error in self.errors + s.errors + s.unreadable + sub.errors:
            console.print(shown(error), style="yellow")
        console.print(shown(line))


def cost_text(pricing: Pricing | None, images: int, mode: str) -> str | None:
    """What `images` bought in `mode` cost, for people; None without a price or images."""
    estimate = pricing.estimate(images, mode) if pricing and images else None
    return None if estimate is None or pricing is None else f"{money(estimate)} {pricing.currency}"


class PlanOutput:
    """A dry run's plan, printed project by project as it is made, so that `--all` over any
    number of projects holds one batch of them in memory, never the list: with `--json` one
    object whose `projects` array is written an element at a time; for people, one line per
    project and the total. Its header waits for the first project: an error before it is the
    usual one-object answer."""

    def __init__(self, *, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.begun = False
        self._header: dict[str, object] = {}
        self._console: Console | None = None

    def open(self, header: Mapping[str, object]) -> None:
        """The keys written before the projects (known before any is planned)."""
        self._header = dict(header)

    def project(self, entry: ProjectPlan) -> None:
        if self.as_json:
            text = json_text(_entry_json(entry))
            if self.begun:
                write_stdout(",\n" + text)
            else:
                write_stdout(json_text(self._header)[:-1] + ', "projects": [\n' + text)
        elif not self.quiet:
            self._console = self._console or stdout_console()
            # Plain text, not markup: a project key's brackets are printed as they are.
            self._console.print(printable(_entry_line(entry)), markup=False)
        self.begun = True

    def close_json(self, tail: Mapping[str, object]) -> None:
        """The rest of the object: the plan's totals, or the error that stopped it."""
        if not self.begun:
            write_stdout(json_text({**self._header, "projects": [], **tail}) + "\n")
            return
        rest = json_text(dict(tail))
        write_stdout("\n]" + (", " + rest[1:] if len(rest) > 2 else "}") + "\n")


def _entry_json(entry: ProjectPlan) -> dict[str, object]:
    # Written out, not derived from the fields: a dry run of --all writes one per project.
    if entry.error is not None:
        return {"project": entry.project, "error": entry.error}
    return {
        "project": entry.project,
        "scenes_short": list(entry.scenes_short),
        "images": entry.images,
        "capped": entry.capped,
        "skipped_scenes": list(entry.skipped_scenes),
        "unprompted_scenes": list(entry.unprompted_scenes),
        "pending_scenes": list(entry.pending_scenes),
    }


def _entry_line(entry: ProjectPlan) -> str:
    if entry.error is not None:
        return f"{entry.project}: not planned: {entry.error}"
    if entry.images:
        n = len(entry.scenes_short)
        parts = [f"{entry.project}: {_n(entry.images, 'image')} for {_n(n, 'scene')}"]
    else:
        parts = [f"{entry.project}: nothing to buy"]
    if entry.pending_scenes:
        parts.append(f"{_n(len(entry.pending_scenes), 'scene')} already on its way")
    if entry.unprompted_scenes:
        parts.append(f"{_n(len(entry.unprompted_scenes), 'scene')} without a prompt")
    if entry.skipped_scenes:
        parts.append(f"{_n(len(entry.skipped_scenes), 'scene')} complete")
    if entry.capped:
        parts.append(f"{entry.capped} beyond the cap")
    return ", ".join(parts)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class DryRunResult:
    """`generate --dry-run`: the plan, nothing bought. Its projects were printed as they were
    planned (PlanOutput); what is left is the total."""

    mode: str
    pricing: Pricing
    cap: Cap
    output: PlanOutput
    images: int = 0
    # Projects it would buy for, projects planned, and those that could not be (exit 3).
    buying: int = 0
    planned: int = 0
    unplanned: int = 0
    capped: int = 0

    def add(self, entry: ProjectPlan) -> None:
        self.output.project(entry)
        self.planned += 1
        self.unplanned += entry.error is not None
        self.images += entry.images
        self.buying += entry.images > 0
        self.capped += entry.capped

    @property
    def exit_code(self) -> int:
        # The plan was made: 0, whatever a run would leave missing (it is a preview, not a
        # finding); a project that cannot be planned would fail a real run too.
        return EXIT_CANNOT_WORK if self.unplanned else EXIT_OK

    def stderr_lines(self) -> list[str]:
        return []

    def header(self) -> dict[str, object]:
        return {"dry_run": True, "mode": self.mode}

    def to_json(self) -> dict[str, object]:
        """What follows the projects in the JSON object."""
        unit = self.pricing.unit(self.mode)
        return {
            "plan": {
                "images": self.images,
                "projects": self.buying,
                "mode": self.mode,
                "estimated_cost": amount_json(self.pricing.estimate(self.images, self.mode)),
                "currency": self.pricing.currency,
                "unit_price": amount_json(unit),
            },
            "capped": self.capped,
            "cap": self.cap.label or None,
            "unplanned": self.unplanned,
        }

    def render(self, console: Console) -> None:
        mode = "through the Batch API" if self.mode == BATCH else "synchronously"
        line = (
            f"plan (dry run, nothing bought): {_n(self.images, 'image')} for "
            f"{_n(self.buying, 'project')} {mode}"
        )
        estimate = self.pricing.estimate(self.images, self.mode)
        if estimate is None:
            line += ", no estimate (set [provider] price)"
        else:
            line += f", estimated {money(estimate)} {self.pricing.currency}"
        if self.capped:
            line += f"; {self.capped} more beyond {self.cap}"
        if self.unplanned:
            line += f"; {_n(self.unplanned, 'project')} could not be planned"
        console.print(shown(line))
