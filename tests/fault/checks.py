"""What a fault-injection run's records say: every violation of the guarantee, and the figures.

The guarantee (issue 11, docs/API.md), for every page tracking a payment:

- on one connection, the `payment-status` events of a payment carry strictly
  increasing `seq`; a terminal status is never followed by PENDING or by the
  other terminal status (not on any later connection either);
- `payment-success`/`payment-failed` and `payment-completed` at most once per
  connection, and at most once per page across all its connections (a
  re-track with `last_seq` at or past the final state gets neither again);
  after a re-track with `last_seq`, only what it missed;
- by the deadline (5 s after storage and pub/sub are back, plus one
  reconciler interval for dropped webhooks) the page shows CamPay's truth;

and for the data: Redis holds CamPay's truth for every payment, every payment
initiated over REST keeps its owner, order id, phone, USSD code and amount and
its order still points to it, no forged webhook changes anything, and no
request is answered with a 5xx (an initiate while Redis is down included).

Every franc reaches its order (issue 31): no order is collected twice (CamPay's
transactions grouped by the order of the intent named by their
`external_reference`), but for the two ways docs/API.md states, counted as
figures: a collect an instance cut off from Redis started for a key it had
never seen (it logs each such claim), and one under a new key after the first
key said `initiation_expired` before CamPay's word about the first collect
reached any instance; each crash payment's order, read by its owner after
convergence, shows the reference CamPay collected for it and CamPay's truth
(another user gets 404); every settled payment's merchant hears of its final
status exactly once by message id, with its order id, and never of a
reference nobody initiated.

All violations are collected, not just the first, so one failing run shows
the whole picture.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.fault.clients import TRACK_ACK_TIMEOUT, CheckoutPage, EventRecord
from tests.fault.plan import BAD_SIGNATURE_KINDS, FORGED_KINDS, PaymentRun
from tests.fault.scenario import RunResult

TERMINAL = {"SUCCESSFUL", "FAILED"}
PAYMENT_EVENTS = {"payment-initiated", "payment-status", "payment-success", "payment-failed", "payment-completed"}
FORGED_REASON = "forged reason"

# Each violation category, as the report names it.
CATEGORIES: dict[str, str] = {
    "not_converged": "page not showing CamPay's truth by the deadline",
    "seq_decrease": "payment-status seq went down on one connection",
    "seq_repeat": "payment-status seq repeated on one connection",
    "backward": "PENDING shown after a terminal status",
    "other_terminal": "the other terminal status shown after a terminal one",
    "wrong_terminal": "a terminal status contradicting CamPay's truth reached a page",
    "duplicate_completion": "payment-completed more than once on one connection",
    "duplicate_outcome": "payment-success/payment-failed more than once on one connection",
    "resent_after_retrack": "after track-payment with last_seq, an event with seq <= last_seq",
    "foreign_event": "a page received an event for a payment it does not track",
    "track_refused": "track-payment refused for the payment's owner",
    "stored_mismatch": "Redis does not hold CamPay's truth",
    "owner_lost": "a record lost its owner, order id, phone or USSD code (or is gone)",
    "amount_changed": "the stored amount is not the initiated one",
    "order_hijacked": "the order index points to another payment",
    "forged_accepted": "a webhook with a bad signature was accepted (2xx) instead of refused with 401",
    "forged_applied": "something from a forged or unverified webhook body was stored or shown",
    "http_5xx": "a request was answered with a 5xx (other than 503 back-pressure with Retry-After)",
    "initiate_failed": "a payment could not be initiated",
    "not_healthy_again": "an instance did not report healthy by the deadline after Redis was back",
    "no_http_answer": "a running instance did not answer a request (refused, reset or 15 s timeout)",
    "connect_failed": "a running instance refused, failed or did not answer (5 s) a page's Socket.IO connect",
    "track_unanswered": "track-payment not acked within 5 s on a connection that stayed open",
    "second_collect": "an order got a second CamPay collect",
    "completion_twice_per_page": "payment-success/payment-failed or payment-completed more than once on one page",
    "crash_not_linked": "a crash payment's order, read by its owner, does not show its CamPay reference and truth",
    "order_not_private": "another user reading a crash payment's order did not get 404",
    "initiate_5xx_redis_down": "an initiate answered 5xx while Redis was down (other than 503 back-pressure)",
    "merchant_missing": "a payment CamPay settled has no merchant message of its final type",
    "merchant_extra": "a payment got another final merchant message id than its own (or the other final type)",
    "merchant_wrong": "a merchant message with the wrong order, status or type, or a bad signature",
    "merchant_unknown": "a merchant message for a reference nobody initiated",
    "merchant_type_changed": "deliveries of one merchant message id carried different types",
}

# What a 2-core machine running two servers, Redis and a few hundred clients can fail to do in time
# under these faults. Reported (and printed by the runner) as figures of availability, not asserted
# by the test: the guarantee is about what pages are shown and what is stored, and holds regardless.
AVAILABILITY = frozenset({"no_http_answer", "connect_failed", "track_unanswered"})


@dataclass
class Report:
    figures: list[tuple[str, str]] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # Orders collected again while their instance was cut off from Redis, by one that had never seen their key (the cost
    # of payments going on during an outage; docs/API.md): a figure, not a violation.
    blind_second_collects: list[str] = field(default_factory=list)
    # Orders collected again under a new key after the first key said `initiation_expired`, CamPay's word about the
    # first collect having reached no instance within COLLECT_LIFETIME_SECONDS (docs/API.md): a figure too.
    expired_second_collects: list[str] = field(default_factory=list)

    def collected_twice_as_stated(self, order_id: str) -> bool:
        """Whether `order_id` was collected twice in one of the ways docs/API.md states (either may have paid)."""
        return order_id in self.blind_second_collects or order_id in self.expired_second_collects

    @property
    def ok(self) -> bool:
        """The guarantee held: no violation outside the availability figures."""
        return not any(found for category, found in self.violations.items() if category not in AVAILABILITY)

    def add(self, category: str, example: str) -> None:
        assert category in CATEGORIES, category
        self.violations[category].append(example)

    def figures_text(self) -> str:
        width = max((len(name) for name, _ in self.figures), default=0)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in self.figures)

    def violations_text(self, examples: int = 3, *, availability: bool = False) -> str:
        lines = []
        for category, found in self.violations.items():
            if not found or (category in AVAILABILITY) != availability:
                continue
            lines.append(f"  {category} ({CATEGORIES[category]}): {len(found)}")
            lines.extend(f"      e.g. {example}" for example in found[:examples])
        return "\n".join(lines) or "  none"

    def text(self, examples: int = 3) -> str:
        return (
            f"figures:\n{self.figures_text()}\nviolations of the guarantee:\n{self.violations_text(examples)}\n"
            f"availability under load (reported, not asserted):\n{self.violations_text(examples, availability=True)}"
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation), q in [0, 100]."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def _status_events(events: list[EventRecord]) -> list[EventRecord]:
    return [e for e in events if e.name == "payment-status" and isinstance(e.payload, dict)]


def _describe(e: EventRecord, result: RunResult) -> str:
    p = e.payload if isinstance(e.payload, dict) else {}
    return f"{e.name} {p.get('status')} seq={p.get('seq')} at t={result.at(e.at):.2f}s"


def _shown_at(page: CheckoutPage, cutoff: float) -> dict[str, Any] | None:
    shown = None
    for e in _status_events(page.events):
        if e.at <= cutoff:
            shown = e.payload
    return shown


def _connected_at(page: CheckoutPage, moment: float) -> bool:
    return any(c.opened_at <= moment and (c.closed_at is None or c.closed_at > moment) for c in page.connections)


def _settled_since(page: CheckoutPage, truth: str, cutoff: float) -> float | None:
    """When the page started showing `truth` for good (as of `cutoff`), or None if it does not show it."""
    since = None
    for e in _status_events(page.events):
        if e.at > cutoff:
            break
        if e.payload.get("status") == truth:
            since = since if since is not None else e.at
        else:
            since = None
    return since


def _check_page(report: Report, result: RunResult, p: PaymentRun, page: CheckoutPage, tally: Counter[str]) -> None:
    who = f"{page.page_id} ({p.reference})"
    by_conn: dict[str, list[EventRecord]] = defaultdict(list)
    for e in page.events:
        by_conn[e.conn].append(e)
    first_track: dict[str, int] = {}
    for track in page.tracks:
        first_track.setdefault(track.conn, track.last_seq or 0)
    flagged: set[str] = set()

    def once(category: str, example: str) -> None:
        tally[category + ":events"] += 1
        if category not in flagged:
            flagged.add(category)
            report.add(category, example)

    for conn, events in by_conn.items():
        previous: EventRecord | None = None
        counts: Counter[str] = Counter()
        last_seq = first_track.get(conn, 0)
        for e in events:
            if e.name not in PAYMENT_EVENTS:
                continue
            payload = e.payload if isinstance(e.payload, dict) else {}
            if payload.get("reference") != page.reference:
                once("foreign_event", f"{who} on {conn}: {_describe(e, result)} for {payload.get('reference')}")
                continue
            counts[e.name] += 1
            seq = payload.get("seq", 0)
            if last_seq and seq <= last_seq and e.name in ("payment-status", "payment-completed"):
                once(
                    "resent_after_retrack",
                    f"{who} on {conn} tracked with last_seq={last_seq}, got {_describe(e, result)}",
                )
            if e.name != "payment-status":
                continue
            if previous is not None:
                before = previous.payload.get("seq", 0)
                if seq < before:
                    once("seq_decrease", f"{who} on {conn}: {_describe(e, result)} after {_describe(previous, result)}")
                elif seq == before:
                    once("seq_repeat", f"{who} on {conn}: {_describe(e, result)} after {_describe(previous, result)}")
            previous = e
        if counts["payment-completed"] > 1:
            tally["extra_completions"] += counts["payment-completed"] - 1
            once("duplicate_completion", f"{who} on {conn}: payment-completed x{counts['payment-completed']}")
        if counts["payment-success"] + counts["payment-failed"] > 1:
            once(
                "duplicate_outcome",
                f"{who} on {conn}: success x{counts['payment-success']}, failed x{counts['payment-failed']}",
            )

    # The page as its shopper sees it: one outcome and one completion, whatever its connections did.
    mine = [e for e in page.events if isinstance(e.payload, dict) and e.payload.get("reference") == page.reference]
    outcomes = [e for e in mine if e.name in ("payment-success", "payment-failed")]
    completions = [e for e in mine if e.name == "payment-completed"]
    if len(outcomes) > 1 or len(completions) > 1:
        conns = sorted({e.conn for e in outcomes + completions})
        tracked = [f"{t.conn} last_seq={t.last_seq}" for t in page.tracks]
        once(
            "completion_twice_per_page",
            f"{who}: {', '.join(_describe(e, result) + ' on ' + e.conn for e in outcomes + completions)} "
            f"over {len(conns)} connection(s); tracks: {', '.join(tracked)}"[:600],
        )

    # Across the page's whole life (every connection, in the order received).
    terminal: EventRecord | None = None
    for e in page.events:
        if e.name not in PAYMENT_EVENTS - {"payment-initiated"} or not isinstance(e.payload, dict):
            continue
        if e.payload.get("reference") != page.reference:
            continue
        status = e.payload.get("status")
        if status in TERMINAL and status != p.truth:
            once("wrong_terminal", f"{who}: {_describe(e, result)} but CamPay says {p.truth}")
        if e.payload.get("reason") == FORGED_REASON:
            once("forged_applied", f"{who}: {_describe(e, result)} shows the forged webhook's reason")
        if e.name != "payment-status":
            continue
        if terminal is not None and status == "PENDING":
            once(
                "backward",
                f"{who}: {_describe(e, result)} after {_describe(terminal, result)} "
                f"({'same' if e.conn == terminal.conn else 'a later'} connection)",
            )
        elif terminal is not None and status in TERMINAL and status != terminal.payload.get("status"):
            once("other_terminal", f"{who}: {_describe(e, result)} after {_describe(terminal, result)}")
        if status in TERMINAL and terminal is None:
            terminal = e
    closed = {c.conn_id: c.closed_at for c in page.connections}
    for track in page.tracks:
        if (
            track.ack is not None
            and track.error
            and track.error != "timeout"
            and track.error not in BACK_PRESSURE_CODES
        ):
            once("track_refused", f"{who}: track-payment on {track.conn} acked {track.ack}")
        if track.error == "timeout" and (closed.get(track.conn) or float("inf")) > track.sent_at + TRACK_ACK_TIMEOUT:
            once("track_unanswered", f"{who}: track-payment sent on {track.conn} at t={result.at(track.sent_at):.2f}s")
    for failure in page.connect_failures:
        if not result.was_down(failure.instance, failure.at):
            once(
                "connect_failed",
                f"{who} to {failure.instance} at t={result.at(failure.at):.2f}s: {failure.error[:200]}",
            )
    for category in flagged:
        tally[category] += 1


def _log_errors(lines: list[str]) -> Counter[str]:
    """error-level lines and tracebacks, by message."""
    found: Counter[str] = Counter()
    for line in lines:
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "critical") or "exception" in entry:
                found[str(entry.get("event"))[:90]] += 1
        elif "Traceback" in line:
            found["Traceback (not a JSON line)"] += 1
    return found


def evaluate(result: RunResult) -> Report:
    report = Report()
    s = result.scenario
    tally: Counter[str] = Counter()
    initiated = [p for p in result.payments if p.reference]
    for p in result.payments:
        if p.reference is None:
            report.add("initiate_failed", f"{p.order_id}: {p.initiate_error}")

    # -- the pages ------------------------------------------------------------------------
    cutoff = result.converged_at or result.deadline
    converge_times: list[float] = []
    converged = 0
    for p, page in result.pages:
        _check_page(report, result, p, page, tally)
        shown = _shown_at(page, cutoff)
        if (shown or {}).get("status") == p.truth:
            converged += 1
            since = _settled_since(page, p.truth, cutoff)
            if since is not None and p.truth_set_at is not None:
                converge_times.append(max(0.0, since - p.truth_set_at))
        else:
            nulls = sum(
                1 for t in page.tracks if isinstance(t.ack, dict) and t.ack.get("ok") and t.ack.get("payment") is None
            )
            stored = (result.stored.get(p.reference or "") or {}).get("status")
            report.add(
                "not_converged",
                f"{page.page_id} ({p.reference}) shows {(shown or {}).get('status')} seq={(shown or {}).get('seq')}, "
                f"CamPay {p.truth} since t={result.at(p.truth_set_at or 0):.2f}s, Redis {stored}; "
                f"{'connected' if _connected_at(page, cutoff) else 'NOT connected'} at the deadline, "
                f"{len(page.connections)} connection(s), "
                f"{len(page.tracks)} track(s), {nulls} acked payment=null, delivery {p.delivery}"
                + _second_collect_note(p),
            )

    for name, at in result.healthy_again.items():
        if at is None or at > result.deadline:
            report.add(
                "not_healthy_again", f"instance {name}, last /health: {result.unhealthy_detail.get(name, '?')[:300]}"
            )

    # -- the data --------------------------------------------------------------------------
    collected_twice = _check_orders(report, result)
    without_owner = 0
    for p in initiated:
        record = result.stored.get(p.reference or "")
        if record is None:
            without_owner += 1
            how = f"initiate answered {p.initiate_answers[-1:]}"
            report.add("owner_lost", f"{p.reference}: no record in Redis ({how})")
            report.add("stored_mismatch", f"{p.reference}: no record in Redis (CamPay {p.truth}; {how})")
            continue
        if record.get("status") != p.truth:
            report.add(
                "stored_mismatch",
                f"{p.reference}: Redis {record.get('status')} seq={record.get('seq')}, CamPay {p.truth}"
                + _second_collect_note(p),
            )
        lost = [
            name
            for name, want in (("owner_id", p.user), ("order_id", p.order_id), ("phone_number", p.stored_phone))
            if record.get(name) != want
        ]
        # A payment whose collect answer never reached the server (adopted from CamPay's record: its 201 is a
        # replay without a USSD code) has no USSD code to keep; every other one keeps the one it was answered.
        # A link has none (its payer pays on CamPay's page), and learns its payer's phone from CamPay's record.
        adopted_without_ussd = p.initiated_via != "201" and not p.ussd_code
        if p.link is not None:
            if record.get("kind") != "link" or record.get("ussd_code") is not None:
                lost.append("kind")
            if p.link == "CARD" and record.get("operator") is not None:
                lost.append("operator")
        elif (not record.get("ussd_code") and not adopted_without_ussd) or (
            p.ussd_code and record.get("ussd_code") != p.ussd_code
        ):
            lost.append("ussd_code")
        if lost:
            without_owner += 1
            report.add(
                "owner_lost",
                f"{p.reference}: {', '.join(f'{n}={record.get(n)!r}' for n in lost)} "
                f"(orphan={record.get('orphan')}, status {record.get('status')}, seq {record.get('seq')}; "
                f"{p.order_id} answered {p.initiated_via} with ussd_code={p.ussd_code!r})",
            )
        if record.get("amount") != p.amount:
            report.add("amount_changed", f"{p.reference}: amount {record.get('amount')}, initiated {p.amount}")
        if record.get("reason") == FORGED_REASON:
            report.add("forged_applied", f"{p.reference}: stored reason is the forged webhook's")
        pointed = result.order_index.get(p.order_id)
        blind = report.collected_twice_as_stated(p.order_id) and pointed in p.campay_references
        if pointed != p.reference and not blind:
            collected_for = result.campay_orders.get(pointed or "")
            how = (
                "a second CamPay collect for the same order"
                if collected_for == p.order_id
                else f"CamPay collected it for {collected_for}"
            )
            report.add(
                "second_collect" if collected_for == p.order_id else "order_hijacked",
                f"{p.order_id} -> {pointed} ({how}), should be {p.reference}; "
                f"our initiate attempts: {p.initiate_answers}",
            )

    # -- every franc reaches its order (the orders first: the data check below knows which were blind) --
    _check_crashes(report, result)
    merchant = _check_merchant(report, result)

    # -- the webhooks and every answer ---------------------------------------------------------
    for r in result.http:
        kind = r.kind.removeprefix("webhook:").removeprefix("unknown_")
        if (
            r.kind.startswith("webhook:")
            and kind in BAD_SIGNATURE_KINDS
            and r.status is not None
            and 200 <= r.status < 300
        ):
            report.add("forged_accepted", f"{r.kind} for {r.reference} on {r.instance}: {r.status} {r.detail}")
        if r.status is not None and r.status >= 500 and not _back_pressure(r):
            report.add("http_5xx", f"{r.kind} on {r.instance} at t={result.at(r.at):.2f}s: {r.status} {r.detail}")
            if r.kind == "initiate" and _while_redis_down(result, r):
                report.add(
                    "initiate_5xx_redis_down",
                    f"initiate on {r.instance} sent t={result.at(r.started):.2f}s: {r.status} {r.detail}",
                )
        if r.status is None and not result.was_down(r.instance, r.at):
            report.add("no_http_answer", f"{r.kind} on {r.instance} sent at t={result.at(r.started):.2f}s: {r.detail}")
    for forged in result.forged_unknown:
        if result.forged_stored.get(forged.reference):
            report.add(
                "forged_applied", f"forged {forged.kind} webhook for unknown {forged.reference} created a record"
            )
    for p in initiated:
        lies = [h for h in p.webhooks if h.kind == "lying_status"]
        record = result.stored.get(p.reference or "") or {}
        if lies and record.get("status") == p.opposite:
            report.add(
                "forged_applied", f"{p.reference}: Redis holds the lying webhook's {p.opposite}, CamPay says {p.truth}"
            )

    # -- figures -------------------------------------------------------------------------------
    pages = len(result.pages)
    f = report.figures
    f.append(
        (
            "payments initiated",
            f"{len(initiated)}/{len(result.payments)} ({s.payments} + {s.crash_collects} crash payments, "
            f"by {s.users} users; {sum(p.initiated_via != '201' for p in initiated)} found by a retried initiate: "
            + ", ".join(
                f"{k} {n}" for k, n in Counter(p.initiated_via for p in initiated if p.initiated_via != "201").items()
            )
            + ")",
        )
    )
    links = [p for p in initiated if p.link is not None]
    f.append(
        (
            "payment links",
            f"{len(links)} of them ({sum(p.link == 'CARD' for p in links)} paid by card), CamPay knowing no "
            f"transaction for each until its payer started; {sum(p.delivery == 'dropped' for p in links)} with "
            "every webhook dropped",
        )
    )
    f.append(("run", f"T={s.duration:.0f} s storm, {result.wall_seconds:.1f} s wall in all, on {result.redis_label}"))
    if result.lost_writes is not None:
        f.append(
            (
                "writes the failover lost",
                f"{result.lost_writes} payment records the killed primary held were missing or behind on the "
                "replica that took over (brought back by re-checks with CamPay: see the convergence below)",
            )
        )
    f.append(("clients converged", f"{converged}/{pages}"))
    if converge_times:
        f.append(
            (
                "time to converge p50/p99/max",
                " / ".join(f"{percentile(converge_times, q):.2f} s" for q in (50, 99, 100))
                + " (from CamPay's outcome to the page showing it for good)",
            )
        )
    back = result.back_at
    if result.converged_at is not None:
        f.append(
            (
                "all pages and Redis on the truth",
                f"{result.converged_at - back:+.2f} s after Redis answered again "
                f"(bound {result.deadline - back:.1f} s)",
            )
        )
    else:
        f.append(
            (
                "all pages and Redis on the truth",
                f"NOT by the deadline ({result.deadline - back:.1f} s after Redis answered again)",
            )
        )
    f.append(
        (
            "instances healthy again",
            ", ".join(
                f"{name} {'+%.2f s' % (at - back) if at is not None else 'NOT by the deadline'}"
                for name, at in result.healthy_again.items()
            ),
        )
    )
    f.append(
        (
            "backward transitions",
            f"{tally['backward'] + tally['other_terminal']} clients "
            f"({tally['backward:events'] + tally['other_terminal:events']} events)",
        )
    )
    f.append(
        (
            "duplicate completions",
            f"{tally['duplicate_completion']} clients "
            f"({tally['extra_completions']} extra payment-completed on one connection)",
        )
    )
    f.append(("seq decreases", f"{tally['seq_decrease']} clients ({tally['seq_decrease:events']} events)"))
    f.append(("seq repeats", f"{tally['seq_repeat']} clients ({tally['seq_repeat:events']} events)"))
    f.append(
        (
            "resent after re-track",
            f"{tally['resent_after_retrack']} clients ({tally['resent_after_retrack:events']} events)",
        )
    )
    f.append(("wrong terminal shown", f"{tally['wrong_terminal']} clients"))
    f.append(("records without owner", f"{without_owner}/{len(initiated)}"))
    f.append(("stored status != CamPay", str(len(report.violations.get("stored_mismatch", [])))))
    statuses = Counter(
        f"{r.kind} {r.status}"
        for r in result.http
        if r.status is not None and r.status >= 500 and not _back_pressure(r)
    )
    f.append(
        (
            "HTTP 5xx",
            f"{sum(statuses.values())}"
            + (f" ({', '.join(f'{k}: {n}' for k, n in statuses.items())})" if statuses else ""),
        )
    )
    pressure = Counter(f"{r.kind} {r.detail}" for r in result.http if _back_pressure(r))
    f.append(
        (
            "503 back-pressure, Retry-After",
            f"{sum(pressure.values())}"
            + (f" ({', '.join(f'{k}: {n}' for k, n in pressure.items())})" if pressure else ""),
        )
    )
    forged_sent = [
        r
        for r in result.http
        if r.kind.removeprefix("webhook:").removeprefix("unknown_") in {*BAD_SIGNATURE_KINDS, "lying_status"}
    ]
    f.append(
        (
            "forged applied",
            f"{len(report.violations.get('forged_applied', [])) + len(report.violations.get('forged_accepted', []))} "
            f"(of {len(forged_sent)} forged webhooks; "
            f"{sum(r.status == 401 for r in forged_sent)} refused with 401)",
        )
    )
    # every franc reaches its order (issue 31)
    crashes = [p for p in result.payments if p.crash]
    in_flight = [
        r
        for r in result.http
        if r.kind == "initiate"
        and result.kill_at is not None
        and r.instance == "b"
        and r.status is None
        and r.started <= result.kill_at <= r.at
    ]
    f.append(
        (
            "collects in flight at the kill",
            f"{result.held_at_kill}/{len(crashes)} crash collects accepted and held at CamPay; "
            f"{len(in_flight)} initiates in flight on b in all; "
            f"{sum(p.forced_webhook for p in result.payments)} payments settled by CamPay before their shopper "
            f"knew the reference (webhook sent at least once)",
        )
    )
    linked = sum(
        1
        for read in result.order_reads
        if read.as_owner and read.status == 200 and _read_matches(read, result.payments)
    )
    replays = [p for p in result.payments if p.initiated_via == "201 replayed"]
    f.append(
        (
            "collects linked to their orders",
            f"{linked}/{len(crashes)} crash payments (order read by its owner); "
            f"{len(replays)} shoppers got a replayed 201, {sum(not p.ussd_code for p in replays)} without a USSD code",
        )
    )
    crash_answers = Counter(_answer_kind(answer) for p in crashes for answer in p.initiate_answers)
    f.append(
        (
            "crash initiate answers",
            ", ".join(f"{k}: {n}" for k, n in crash_answers.most_common(8)) or "none",
        )
    )
    unattributed = sum(1 for tx in result.campay_transactions if not tx.order_id)
    f.append(
        (
            "orders collected twice",
            f"{collected_twice} (CamPay transactions grouped by their intent's order"
            + (f"; {unattributed} transactions with no order found" if unattributed else "")
            + f"; of them {len(report.blind_second_collects)} while their instance was cut off from Redis, by one that had "
            + "never seen the key"
            + (f": {', '.join(report.blind_second_collects[:5])}" if report.blind_second_collects else "")
            + f"; {len(report.expired_second_collects)} under a new key after the first said initiation_expired, "
            + "CamPay's word about the first collect having reached no instance by then"
            + (f": {', '.join(report.expired_second_collects[:5])}" if report.expired_second_collects else "")
            + ")",
        )
    )
    f.append(
        (
            "pages with a completion twice",
            f"{tally['completion_twice_per_page']}/{pages} (across connections; "
            f"{tally['duplicate_completion']} with one on a single connection)",
        )
    )
    redis_down = [r for r in result.http if r.kind == "initiate" and _while_redis_down(result, r)]
    fives = [r for r in redis_down if r.status is not None and r.status >= 500]
    f.append(
        (
            "initiates answered 5xx while Redis was down",
            f"{sum(not _back_pressure(r) for r in fives)} "
            f"(+{sum(_back_pressure(r) for r in fives)} 503 back-pressure with Retry-After, allowed; "
            f"of {len(redis_down)} initiates then: "
            + ", ".join(
                f"{k}: {n}" for k, n in Counter(f"{r.status} {r.detail}".strip() for r in redis_down).most_common(6)
            )
            + ")",
        )
    )
    f.append(("merchant messages delivered / expected", merchant))
    # context
    f.append(
        (
            "CamPay API calls",
            ", ".join(f"{k} {n}" for k, n in sorted(result.campay_calls.items()))
            + f"; {sum(1 for ref in result.campay_orders if ref not in result.stored)} collects the driver never got a reference for",
        )
    )
    kinds = Counter(
        r.kind.removeprefix("webhook:") for r in result.http if r.kind.startswith("webhook:") and r.status is not None
    )
    f.append(("webhooks answered", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))))
    deliveries = Counter(p.delivery for p in initiated)
    f.append(("CamPay deliveries planned", ", ".join(f"{k} {n}" for k, n in sorted(deliveries.items()))))
    outcomes = Counter(
        f"{r.status} {r.detail}"
        for r in result.http
        if r.kind in ("webhook:final", "webhook:duplicate", "webhook:stale_pending") and r.status
    )
    f.append(("genuine webhook answers", ", ".join(f"{k}: {n}" for k, n in outcomes.most_common())))
    no_answer = Counter(r.kind.split(":")[0] for r in result.http if r.status is None)
    f.append(("requests with no HTTP answer (retried)", ", ".join(f"{k} {n}" for k, n in no_answer.items()) or "0"))
    all_tracks = [t for _, page in result.pages for t in page.tracks]
    f.append(
        (
            "track-payment calls",
            f"{len(all_tracks)}: {sum(t.error == 'timeout' for t in all_tracks)} ack timeouts, "
            f"{sum((t.error or '').startswith('disconnected') for t in all_tracks)} cut by a disconnect, "
            f"{sum(bool(isinstance(t.ack, dict) and t.ack.get('ok') and t.ack.get('payment') is None) for t in all_tracks)} acked payment=null",
        )
    )
    conns = [c for _, page in result.pages for c in page.connections]
    f.append(
        (
            "connections",
            f"{len(conns)} ({Counter(c.ended_by for c in conns)['dropped']} dropped by the server side, "
            f"{Counter(c.ended_by for c in conns)['planned']} planned reconnects; "
            f"{sum(len(page.connect_failures) for _, page in result.pages)} refused connects retried)",
        )
    )
    if result.loop_lags:
        worst = sorted(result.lag_spikes, key=lambda spike: -spike[1])[:3]
        f.append(
            (
                "driver event-loop lag p99/max",
                f"{percentile(result.loop_lags, 99) * 1000:.0f} ms / "
                f"{max(result.loop_lags) * 1000:.0f} ms (if high, the driver itself was a bottleneck)"
                + (f"; worst at {', '.join(f't={t:.1f}s' for t, _ in worst)}" if worst else ""),
            )
        )
    f.append(("timeline", "; ".join(f"{t:.1f}s {what}" for t, what in result.timeline)))
    for name, lines in result.log_lines.items():
        errors = _log_errors(lines)
        top = ", ".join(f"{n}x {msg!r}" for msg, n in errors.most_common(4))
        f.append((f"error lines in instance {name}'s log", f"{sum(errors.values())}" + (f": {top}" if top else "")))
    return report


# 503 with Retry-After for these codes is back-pressure, which the brief allows: storage busy, or
# initiate's rate-limit counters unreachable (it fails closed rather than send uncounted USSD pushes).
BACK_PRESSURE_CODES = {"busy", "rate_limit_unavailable"}


def _back_pressure(record: Any) -> bool:
    return record.status == 503 and record.detail in BACK_PRESSURE_CODES and bool(record.retry_after)


def _second_collect_note(p: PaymentRun) -> str:
    if p.reference and p.campay_reference and p.reference != p.campay_reference:
        return f" (the shopper was answered a later collect for the order; CamPay's first was {p.campay_reference})"
    return ""


def _answer_kind(answer: str) -> str:
    """`b t=5.4s: 409 initiation_unknown` -> `409 initiation_unknown`; no HTTP answer -> `no answer`."""
    what = answer.split(": ", 1)[-1]
    return "no answer" if what.startswith("None") else what.strip()


def _while_redis_down(result: RunResult, record: Any) -> bool:
    """Was `record`'s request in flight at some moment while redis-server was down?"""
    if result.redis_down is None:
        return False
    down, back = result.redis_down
    return record.started <= back and record.at >= down


def _read_matches(read: Any, payments: list[PaymentRun]) -> bool:
    p = next((p for p in payments if p.order_id == read.order_id), None)
    body = read.body if isinstance(read.body, dict) else {}
    return (
        p is not None
        and p.campay_reference is not None
        and body.get("reference") == p.campay_reference
        and body.get("status") == p.truth
    )


# What an instance logs when it claims an Idempotency-Key it never saw on its memory while Redis cannot be asked
# (realtime/storage/resilient/policies.py): the claim's nonce is the `external_reference` of what it may collect.
BLIND_CLAIM = "storage: an Idempotency-Key this instance never saw is claimed on its memory"


def blind_claims(result: RunResult) -> dict[str, str]:
    """nonce -> instance, for every claim an instance made on its memory without being able to ask Redis."""
    claims: dict[str, str] = {}
    for instance, lines in result.log_lines.items():
        for line in lines:
            if BLIND_CLAIM not in line:
                continue
            try:
                nonce = json.loads(line).get("nonce")
            except ValueError:
                continue
            if isinstance(nonce, str):
                claims[nonce] = instance
    return claims


def _blind_while_redis_down(result: RunResult, claims: dict[str, str], tx: Any) -> bool:
    """Was `tx` started by an instance cut off from Redis, for a key its memory knew nothing of? The instance
    says so when it claims the key (`BLIND_CLAIM`, naming the nonce CamPay got as `external_reference`), and
    CamPay got the collect while that instance was cut off: from redis-server going down until the instance
    said `healthy` again (an instance runs on its memory until its watcher has seen Redis back and written
    back, seconds to a minute after redis-server answers on a loaded machine; the end is when the driver saw
    `/health` say healthy, a poll after the switch).

    Told by the instance, not guessed from the shopper's attempts: an attempt answered `busy` by the rate
    limiter, or given up by the shopper while the instance still queued it, never showed the key to the
    instance, and a request the shopper gave up on still collects, with no answer to tell which instance."""
    instance = claims.get(tx.external_reference or "")
    if instance is None or result.redis_down is None:
        return False
    down, back = result.redis_down
    cut_off_until = max(back, result.healthy_again.get(instance) or back)
    return down <= tx.created_at <= cut_off_until


def _expired_at(result: RunResult, p: PaymentRun) -> float | None:
    """When the shopper was first answered `initiation_expired` (monotonic), if ever."""
    for answer in p.initiate_answers:
        head, _, what = answer.partition(": ")
        if what.startswith("409 initiation_expired"):
            try:
                return result.t0 + float(head.partition(" t=")[2].rstrip("s"))
            except ValueError:
                return None
    return None


def _collected_again_after_expiry(result: RunResult, p: PaymentRun, first: Any, again: Any) -> bool:
    """Was `again` collected under the shopper's new key after the first key said `initiation_expired`, with
    CamPay's word about the `first` collect accepted (2xx) by no instance before that answer? Then the server
    answered as docs/API.md states: CamPay had not reported the first collect within COLLECT_LIFETIME_SECONDS,
    a new key starts afresh (the plan's lifetime outlasts its confirmations; a loaded machine can take longer to
    take CamPay's callback)."""
    expired = _expired_at(result, p)
    if expired is None or again.created_at < expired:
        return False
    heard = [
        r.at
        for r in result.http
        if r.kind.startswith("webhook:")
        and r.kind.removeprefix("webhook:") not in FORGED_KINDS
        and r.reference == first.reference
        and r.status is not None
        and 200 <= r.status < 300
    ]
    return not heard or min(heard) >= expired


def _check_orders(report: Report, result: RunResult) -> int:
    """No order collected twice (CamPay's transactions by their intent's order), each transaction's intent
    names the order the shopper asked for, and every shopper was answered its own order's collect.

    An order collected twice where all collects but one were started blind by instances cut off from Redis is
    the stated price of payments during an outage (a figure). The blind one may be the first: a healthy
    instance then finds on Redis nothing of a collect that waits in the cut-off instance's memory. So is one
    collected again after its first key expired before CamPay's word about the first collect came (a figure)."""
    claims = blind_claims(result)
    by_order: dict[str, list[Any]] = defaultdict(list)
    for tx in result.campay_transactions:
        if tx.order_by_intent and tx.order_by_description and tx.order_by_intent != tx.order_by_description:
            report.add(
                "order_hijacked",
                f"CamPay transaction {tx.reference} was asked for {tx.order_by_description}, but its intent "
                f"(nonce {tx.external_reference}) names {tx.order_by_intent}",
            )
        if tx.order_id:
            by_order[tx.order_id].append(tx)
    payments = {p.order_id: p for p in result.payments}
    for order_id, txs in by_order.items():
        if len(txs) > 1:
            p = payments.get(order_id)
            blind = sum(_blind_while_redis_down(result, claims, tx) for tx in txs)
            if p is not None and len(txs) - blind <= 1:
                # Payments go on while Redis is away: an instance with no record of the key cannot tell a
                # retry from a first request. Counted (a figure), documented, never hidden as "once".
                report.blind_second_collects.append(order_id)
                continue
            first, *again = sorted(txs, key=lambda tx: tx.created_at)
            if p is not None and len(again) == 1 and _collected_again_after_expiry(result, p, first, again[0]):
                report.expired_second_collects.append(order_id)
                continue
            report.add(
                "second_collect",
                f"{order_id}: {len(txs)} CamPay collects "
                + ", ".join(
                    f"{tx.reference} (nonce {tx.external_reference}, t={result.at(tx.created_at):.2f}s)" for tx in txs
                )
                + (f"; initiate attempts: {p.initiate_answers}" if p else ""),
            )
    for p in result.payments:
        if p.reference and p.campay_references and p.reference not in p.campay_references:
            report.add(
                "order_hijacked",
                f"{p.order_id}: the shopper was answered {p.reference} ({p.initiated_via}), CamPay collected "
                f"{p.campay_references} for it",
            )
    return sum(len(txs) > 1 for txs in by_order.values())


def _check_crashes(report: Report, result: RunResult) -> None:
    payments = {p.order_id: p for p in result.payments}
    for read in result.order_reads:
        p = payments[read.order_id]
        body = read.body if isinstance(read.body, dict) else {}
        if read.as_owner:
            twice = report.collected_twice_as_stated(read.order_id)  # either collect may be the one that paid
            shown = body.get("reference") in p.campay_references and body.get("status") == p.truth
            if read.status != 200 or not (_read_matches(read, result.payments) or (twice and shown)):
                report.add(
                    "crash_not_linked",
                    f"{read.order_id} (owner {p.user}) on {read.instance}: {read.status} "
                    f"reference={body.get('reference') or body.get('error')} status={body.get('status')}; "
                    f"CamPay collected {p.campay_references} and says {p.truth}; "
                    f"initiate attempts: {p.initiate_answers[-4:]}"[:700],
                )
        elif read.status != 404:
            report.add(
                "order_not_private",
                f"{read.order_id} (owner {p.user}) read by another user on {read.instance}: {read.status} "
                f"{str(body)[:200]}",
            )


def _check_merchant(report: Report, result: RunResult) -> str:
    """The merchant's side; returns the figure."""
    known = {tx.reference for tx in result.campay_transactions}
    owner = {ref: p for p in result.payments for ref in p.campay_references}
    by_id: dict[str, list[Any]] = defaultdict(list)
    by_reference: dict[str, list[Any]] = defaultdict(list)
    for d in result.merchant:
        by_id[d.message_id].append(d)
        by_reference[str(d.data.get("reference"))].append(d)
        if not d.verified:
            report.add("merchant_wrong", f"{d.summary()}: signature did not verify")
    for message_id, deliveries in by_id.items():
        types = {d.type for d in deliveries}
        if len(types) > 1:
            report.add(
                "merchant_type_changed", f"{message_id}: {sorted(map(str, types))} over {len(deliveries)} deliveries"
            )
    for reference, deliveries in by_reference.items():
        if reference not in known:
            report.add("merchant_unknown", f"{deliveries[0].summary()} (x{len(deliveries)})")
    expected = {
        f"msg_{p.campay_reference}_{'succeeded' if p.truth == 'SUCCESSFUL' else 'failed'}": p
        for p in result.payments
        if p.campay_reference and p.truth_set_at is not None
    }
    final_types = {"payment.succeeded", "payment.failed"}
    for message_id, p in expected.items():
        mine = [d for d in by_reference.get(p.campay_reference or "", []) if d.type in final_types]
        ids = {d.message_id for d in mine}
        if message_id not in ids:
            stored = (result.stored.get(p.reference or "") or {}).get("status")
            report.add(
                "merchant_missing",
                f"{message_id} ({p.order_id}, CamPay {p.truth}, Redis {stored}, "
                f"{'crash, ' if p.crash else ''}initiated via {p.initiated_via or p.initiate_error})",
            )
        if ids - {message_id}:
            report.add("merchant_extra", f"{p.order_id}: {sorted(ids)}, expected only {message_id}")
        for d in mine:
            want = "payment.succeeded" if p.truth == "SUCCESSFUL" else "payment.failed"
            if d.data.get("order_id") != p.order_id or d.data.get("status") != p.truth or d.type != want:
                report.add("merchant_wrong", f"{d.summary()}; expected order {p.order_id}, {want}, {p.truth}")
                break
    # Messages for references some payment owns but that CamPay never settled (nothing expected of them).
    for reference, deliveries in by_reference.items():
        settled = owner.get(reference)
        if settled is not None and settled.truth_set_at is None:
            report.add("merchant_extra", f"{deliveries[0].summary()}: CamPay never settled {reference}")
    delivered = len(expected.keys() & by_id.keys())
    duplicates = sum(1 for d in result.merchant if d.data.get("duplicate_of"))
    when = (
        f"all by {result.merchant_done_at - result.back_at:+.1f} s after Redis answered again"
        if result.merchant_done_at is not None and result.back_at
        else "NOT all within the wait"
    )
    return (
        f"{delivered}/{len(expected)} ({len(result.merchant)} deliveries of {len(by_id)} message ids; "
        f"{len(result.merchant) - len(by_id)} repeats; {duplicates} with duplicate_of; {when})"
    )
