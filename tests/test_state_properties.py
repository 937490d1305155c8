"""Properties of the state rule (`decide`, `merge`) and of the per-socket gate (`Sessions.admit`), by hypothesis.

The model: one payment, three copies of it (think Redis and the memory
fallback of two instances). A history is a set of facts — our initiation and
the provider's claims about one truth (one final status, one amount, one
operator; any claim may leave fields out, and PENDING claims may come at any
time) — and a schedule delivers every fact at least once, to any copy, in any
order, duplicated, with merges between copies in between. At the end every
copy is merged into copy 0 (the write-back after an outage).

What the rule promises (payments/state.py, docs/API.md "What a tracking
client is guaranteed"), and what is tested here:
- on every copy `seq` never goes down, and a copy whose state changes gets a
  new, higher `seq`; a merge that changes anything is newer than both inputs;
- a merge never drops or alters the initiation (owner, order, phone, USSD);
- a final status of a payment we initiated never changes, even when a final
  claim did not say which amount or currency was paid, but for the one move
  out of a final status (`moved_back`): a link's EXPIRED (our expiry's guess)
  to SUCCESSFUL (the provider took the money after it), or to FAILED
  amount_mismatch (it took another amount), which every schedule of a link
  the provider reports paid ends in, whatever the expiry did;
- every schedule of the same facts (with our initiation among them) ends in
  the same status and initiation fields, and in the same whole state when
  every final claim names every detail (otherwise the first final claim
  applied wins and later ones are duplicates, so operator details can differ);
- for two copies of the same truth, `merge(a, b)` and `merge(b, a)` agree on
  status and initiation fields (of two *different* final statuses the stored
  one wins by design, so the truth is one final status).
- in the cluster as it runs (Redis, two instances' memory, write-back after an
  outage, mirror reads, our initiation stored once), Redis ends newer than
  every other status/reason a socket could have been shown, which is what lets
  the resync converge every socket (docs/API.md guarantee 4);
- the per-socket gate, whatever arrives in whatever order: strictly rising
  `seq`, no PENDING after a final status, at most one completion (two for an
  EXPIRED then SUCCESSFUL link, in that order), nobody else's payment, and a
  socket ends on the newest state it was delivered.

A copy that never saw our initiation holds an orphan (private, no owner); its
amount and currency come from whichever claim created it, so orphans alone are
not promised to converge: our initiation, when it arrives, wins those fields.

Three counterexamples hypothesis found once (an owned success re-checked by a
late merge, two copies at one seq in different states, an orphan's default
currency) are kept below as plain tests: the rule was fixed for them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payments.access import Identity
from payments.model import AMOUNT_MISMATCH, Payment, PaymentStatus, StatusUpdate, UpdateSource
from payments.state import _INITIATION_FIELDS as INITIATION_FIELDS
from payments.state import _PROVIDER_FIELDS as PROVIDER_FIELDS
from payments.state import decide, merge
from realtime.sessions import Admission, Sessions
from tests.test_state_rule import T0, owned

pytestmark = pytest.mark.slow

REF = "ref-1"
COPIES = 3
# Fixed and derandomized, so CI runs the same examples every time.
# Two schedules per example: fewer examples, same depth.
PAIRS = settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULE = settings(max_examples=120, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GATE = settings(max_examples=200, derandomize=True, deadline=None)

# Who initiated it and for what: a merge must never drop or alter these once a copy holds them.
NEVER_DROPPED = ("owner_id", "order_id", "phone_number", "ussd_code")


def moved_back(old: Payment, new: Payment) -> bool:
    """Whether `new` leaves `old`'s final status (ours, not an orphan's) for another status: backwards.
    The one move that is not is a link's way out of EXPIRED on the provider's word that money reached it
    (payments/state.py): to SUCCESSFUL, or to FAILED amount_mismatch (another amount than asked)."""
    if not old.status.is_terminal or old.orphan or new.status is old.status:
        return False
    paid = new.status is PaymentStatus.SUCCESSFUL or (
        new.status is PaymentStatus.FAILED and new.reason == AMOUNT_MISMATCH
    )
    return not (old.status is PaymentStatus.EXPIRED and paid and old.kind == "link")


def link_initiated() -> Payment:
    """Our initiation of a payment link, its lifetime over from the start (its expiry applies whenever it comes)."""
    return owned(kind="link", phone_number=None, ussd_code=None, link_expires_at=T0)


# The link's expiry: the reconciler heard CamPay know no transaction for it, past its lifetime.
EXPIRY = StatusUpdate(reference=REF, status="EXPIRED", source=UpdateSource.LINK_EXPIRY)


def state(payment: Payment) -> tuple[Any, ...]:
    """What makes two copies the same state: everything but seq and timestamps."""
    return tuple(
        getattr(payment, name) for name in (*INITIATION_FIELDS, *PROVIDER_FIELDS, "status", "reason", "orphan")
    )


# -- strategies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """What the provider knows about the payment: one final status and its details."""

    status: str
    amount: int
    currency: str
    operator: str
    operator_reference: str
    reason: str | None

    def claim(self, word: str, keep: frozenset[str] = frozenset(), reason: bool = True) -> StatusUpdate:
        details = {name: getattr(self, name) for name in ("amount", "currency", "operator", "operator_reference")}
        return StatusUpdate(
            reference=REF,
            status=word,
            source=UpdateSource.WEBHOOK,
            reason=self.reason if reason else None,
            **{name: value for name, value in details.items() if name in keep},
        )

    def complete(self) -> StatusUpdate:
        return self.claim(self.status, frozenset({"amount", "currency", "operator", "operator_reference"}))


truths = st.builds(
    Truth,
    status=st.sampled_from(["SUCCESSFUL", "FAILED"]),
    amount=st.sampled_from([500, 5]),  # 5: the shopper paid another amount than the order asked for
    currency=st.sampled_from(["XAF", "EUR"]),
    operator=st.sampled_from(["MTN", "ORANGE"]),
    operator_reference=st.sampled_from(["op-1", "op-2"]),
    reason=st.sampled_from([None, "insufficient funds"]),
)


@st.composite
def claims(draw: st.DrawFn, truth: Truth, *, with_amount: bool, complete: bool) -> StatusUpdate:
    """One provider claim: PENDING or the final status, with any of the truth's details left out.

    `with_amount`: final claims name amount and currency; `complete`: final claims name everything.
    """
    word = draw(st.sampled_from(["PENDING", truth.status, "SUCCESS" if truth.status == "SUCCESSFUL" else "FAILED"]))
    keep = set(draw(st.sets(st.sampled_from(["amount", "currency", "operator", "operator_reference"]))))
    if with_amount and word != "PENDING":
        keep |= {"amount", "currency"}
    if complete and word != "PENDING":
        keep |= {"amount", "currency", "operator", "operator_reference"}
    source = draw(st.sampled_from([UpdateSource.WEBHOOK, UpdateSource.PROVIDER_POLL]))
    claim = truth.claim(word, frozenset(keep), reason=complete or draw(st.booleans()))
    return claim.model_copy(update={"source": source})


Fact = Payment | StatusUpdate  # the initiation, or a provider claim


@st.composite
def histories(
    draw: st.DrawFn,
    *,
    initiated: bool | None = None,
    with_amount: bool = False,
    complete: bool = False,
    link: bool = False,
    truth: st.SearchStrategy[Truth] = truths,
) -> tuple[Truth, list[Fact]]:
    """The facts about one payment: maybe our initiation, then provider claims about one truth.

    `complete`: every final claim names every detail, and at least one final claim is among them.
    `link`: a payment link, whose expiry (once or twice) is among the facts, in any place.
    """
    told = draw(truth)
    init = draw(st.booleans()) if initiated is None else initiated
    facts: list[Fact] = [link_initiated() if link else owned()] if init else []
    facts += draw(st.lists(claims(told, with_amount=with_amount, complete=complete), min_size=1, max_size=4))
    if complete:
        facts.append(told.complete())
    if link:
        facts += [EXPIRY] * draw(st.integers(1, 2))
    return told, facts


Step = tuple[str, int, int]  # ("deliver", fact, copy) or ("merge", from copy, into copy)


@st.composite
def schedules(draw: st.DrawFn, facts: int) -> list[Step]:
    """Every fact delivered at least once, some twice, merges between copies, all in any order."""
    copy = st.integers(0, COPIES - 1)
    steps: list[Step] = [("deliver", i, draw(copy)) for i in range(facts)]
    steps += draw(st.lists(st.tuples(st.just("deliver"), st.integers(0, facts - 1), copy), max_size=3))
    steps += draw(st.lists(st.tuples(st.just("merge"), copy, copy), max_size=5))
    return list(draw(st.permutations(steps)))


# -- the model -------------------------------------------------------------------------------


@dataclass
class Run:
    """The copies after a schedule, and every state any copy held on the way."""

    copies: list[Payment | None] = field(default_factory=lambda: [None] * COPIES)
    held: list[Payment] = field(default_factory=list)
    clock: int = 0

    def now(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    def store(self, index: int, new: Payment, *, final_is_fixed: bool) -> None:
        old = self.copies[index]
        if old is not None:
            assert new.seq >= old.seq, f"seq went down on copy {index}: {old.seq} -> {new.seq}"
            if state(new) != state(old):
                assert new.seq > old.seq, f"copy {index} changed without a new seq: {old} -> {new}"
            for name in NEVER_DROPPED:
                if getattr(old, name) is not None:
                    assert getattr(new, name) == getattr(old, name), f"{name} dropped or altered: {old} -> {new}"
            if final_is_fixed:
                assert not moved_back(old, new), f"final status changed on copy {index}: {old} -> {new}"
        self.copies[index] = new
        self.held.append(new)

    def merge(self, source: int, target: int, *, final_is_fixed: bool) -> None:
        incoming, stored = self.copies[source], self.copies[target]
        if incoming is None:
            return
        result = merge(stored, incoming, self.now())
        if result.changed and stored is not None:
            assert result.payment.seq > max(stored.seq, incoming.seq), "a changing merge must be newer than both"
        if not result.changed:
            assert result.payment == stored
        self.store(target, result.payment, final_is_fixed=final_is_fixed)


def play(facts: list[Fact], schedule: list[Step], *, final_is_fixed: bool = False) -> Run:
    run = Run()
    for kind, a, b in schedule:
        if kind == "merge":
            run.merge(a, b, final_is_fixed=final_is_fixed)
            continue
        fact = facts[a]
        if isinstance(fact, Payment):  # initiation: `create_payment` merges into what is stored
            run.store(b, merge(run.copies[b], fact, run.now()).payment, final_is_fixed=final_is_fixed)
        else:
            transition = decide(run.copies[b], fact, run.now())
            if transition.applied:
                assert transition.payment is not None
                run.store(b, transition.payment, final_is_fixed=final_is_fixed)
    for source in range(1, COPIES):  # the write-back: every copy merged into copy 0
        run.merge(source, 0, final_is_fixed=final_is_fixed)
    return run


# -- properties of decide and merge ------------------------------------------------------------


@RULE
@given(st.data())
def test_on_every_copy_seq_only_grows_and_a_merge_never_drops_the_initiation(data: st.DataObject) -> None:
    _, facts = data.draw(histories())
    run = play(facts, data.draw(schedules(len(facts))))  # the checks run inside `store` at every step
    final = run.copies[0]
    if any(isinstance(fact, Payment) for fact in facts):
        assert final is not None and not final.orphan
        assert [getattr(final, name) for name in NEVER_DROPPED] == ["alice", "order-1", "237671234567", "*126#"]
    elif final is not None:
        assert final.orphan and final.owner_id is None and final.order_id is None  # private until adopted


@RULE
@given(st.data())
def test_a_final_status_never_changes_when_every_final_claim_names_amount_and_currency(data: st.DataObject) -> None:
    _, facts = data.draw(histories(with_amount=True))
    play(facts, data.draw(schedules(len(facts))), final_is_fixed=True)


@PAIRS
@given(st.data())
def test_every_schedule_of_the_same_facts_ends_in_the_same_status_and_initiation(data: st.DataObject) -> None:
    truth, facts = data.draw(histories(initiated=True))
    first = play(facts, data.draw(schedules(len(facts)))).copies[0]
    second = play(facts, data.draw(schedules(len(facts)))).copies[0]
    assert first is not None and second is not None
    assert first.status is second.status
    assert [getattr(first, n) for n in INITIATION_FIELDS] == [getattr(second, n) for n in INITIATION_FIELDS]
    if first.status.is_terminal:  # and it is the truth, or the truth found to be the wrong amount
        paid_as_asked = truth.amount == 500 and truth.currency == "XAF"
        expected = {truth.status} if paid_as_asked else {truth.status, "FAILED"}
        assert first.status.value in expected
        if truth.status == "SUCCESSFUL" and first.status is PaymentStatus.FAILED:
            assert first.reason == AMOUNT_MISMATCH


@PAIRS
@given(st.data())
def test_when_final_claims_are_complete_every_schedule_ends_in_the_same_whole_state(
    data: st.DataObject,
) -> None:
    _, facts = data.draw(histories(initiated=True, complete=True))
    first = play(facts, data.draw(schedules(len(facts)))).copies[0]
    second = play(facts, data.draw(schedules(len(facts)))).copies[0]
    assert first is not None and second is not None
    assert state(first) == state(second)


@PAIRS
@given(st.data())
def test_merge_in_either_order_agrees_on_status_and_initiation(data: st.DataObject) -> None:
    """Two copies that grew apart from the same facts (with our initiation) merge to the same result."""
    _, facts = data.draw(histories(initiated=True))
    a = play(facts, data.draw(schedules(len(facts)))).copies[data.draw(st.integers(0, COPIES - 1))]
    b = play(facts, data.draw(schedules(len(facts)))).copies[data.draw(st.integers(0, COPIES - 1))]
    if a is None or b is None:
        return
    ab, ba = merge(a, b, T0).payment, merge(b, a, T0).payment
    assert ab.status is ba.status
    assert [getattr(ab, n) for n in INITIATION_FIELDS] == [getattr(ba, n) for n in INITIATION_FIELDS]


# -- the cluster as it runs: Redis, two instances' memory, write-back and mirroring ----------------

REDIS = 0


@st.composite
def cluster_schedules(draw: st.DrawFn, facts: list[Fact]) -> list[Step]:
    """Our initiation stored once, claims at any copy, write-backs and mirror reads in between.

    Copy 0 is Redis; copies 1 and 2 are two instances' memory fallbacks. ("writeback", i, 0): instance
    i's Redis is back, its copy is merged into Redis and it holds Redis's result; ("mirror", i, 0): a
    healthy read, instance i holds Redis's copy unless it has changes not written back yet.
    """
    copy = st.integers(0, COPIES - 1)
    instance = st.integers(1, COPIES - 1)
    claims = [i for i, fact in enumerate(facts) if isinstance(fact, StatusUpdate)]
    steps: list[Step] = [("deliver", i, draw(copy)) for i in range(len(facts))]
    steps += draw(st.lists(st.tuples(st.just("deliver"), st.sampled_from(claims), copy), max_size=3))
    steps += draw(st.lists(st.tuples(st.sampled_from(["writeback", "mirror"]), instance, st.just(REDIS)), max_size=5))
    return list(draw(st.permutations(steps)))


def play_cluster(facts: list[Fact], schedule: list[Step]) -> tuple[Payment | None, list[Payment]]:
    """Redis's copy after every instance wrote back, and every state any copy held on the way."""
    run, dirty = Run(), set[int]()
    for kind, a, b in schedule:
        if kind == "deliver":
            fact = facts[a]
            if isinstance(fact, Payment):
                new: Payment | None = merge(run.copies[b], fact, run.now()).payment
            else:
                new = decide(run.copies[b], fact, run.now()).payment
            if new is not None and new != run.copies[b]:
                run.store(b, new, final_is_fixed=False)
                dirty |= {b} - {REDIS}
        elif kind == "writeback" or a not in dirty:
            if kind == "writeback" and run.copies[a] is not None:
                run.merge(a, REDIS, final_is_fixed=False)
            run.copies[a] = run.copies[REDIS]
            dirty.discard(a)
    for instance in range(1, COPIES):
        run.merge(instance, REDIS, final_is_fixed=False)
    return run.copies[REDIS], run.held


@RULE
@given(st.data())
def test_after_the_write_back_redis_is_newer_than_every_other_state_a_socket_could_be_shown(
    data: st.DataObject,
) -> None:
    """docs/API.md guarantee 4 ("always converges") rests on this: a socket shown any state of the
    payment (status, reason, order) other than what Redis ends with holds a lower seq than Redis's,
    so the resync's re-read passes its gate. Orphans are left out: no owner's socket is shown one."""
    _, facts = data.draw(histories(initiated=True))
    final, held = play_cluster(facts, data.draw(cluster_schedules(facts)))
    assert final is not None and not final.orphan
    for shown in held:
        if not shown.orphan and (shown.status, shown.reason, shown.order_id) != (
            final.status,
            final.reason,
            final.order_id,
        ):
            assert final.seq > shown.seq, f"a socket shown {shown} would never be sent {final}"


# -- payment links: the expiry is our guess, the provider's SUCCESSFUL the truth ---------------------

paid_as_asked = st.builds(
    Truth,
    status=st.just("SUCCESSFUL"),
    amount=st.just(500),
    currency=st.just("XAF"),
    operator=st.sampled_from(["MTN", "ORANGE"]),
    operator_reference=st.sampled_from(["op-1", "op-2"]),
    reason=st.just(None),
)


@RULE
@given(st.data())
def test_a_links_final_status_moves_only_from_expired_to_successful(data: st.DataObject) -> None:
    """The 'never backwards' property for links, whose expiry may come before, between or after the
    provider's claims: a final status changes only from EXPIRED to SUCCESSFUL (`moved_back`)."""
    _, facts = data.draw(histories(with_amount=True, link=True))
    run = play(facts, data.draw(schedules(len(facts))), final_is_fixed=True)
    for shown in run.held:  # a success is only ever final from a seq above every expiry a copy showed
        if shown.status is PaymentStatus.SUCCESSFUL and not shown.orphan:
            assert shown.final_seq is not None and shown.final_seq <= shown.seq


@PAIRS
@given(st.data())
def test_a_link_the_provider_reports_paid_ends_successful_whatever_the_expiry_did(data: st.DataObject) -> None:
    """Money that reached the provider is the truth: every schedule of a link's facts, its expiry anywhere
    among them, ends SUCCESSFUL once the provider's believed SUCCESSFUL is among them."""
    _, facts = data.draw(histories(initiated=True, complete=True, link=True, truth=paid_as_asked))
    for _ in range(2):
        final = play(facts, data.draw(schedules(len(facts)))).copies[0]
        assert final is not None and final.status is PaymentStatus.SUCCESSFUL and final.kind == "link"
        assert final.final_seq is not None and final.final_seq <= final.seq


paid_another_amount = st.builds(
    Truth,
    status=st.just("SUCCESSFUL"),
    amount=st.sampled_from([500, 5]),
    currency=st.sampled_from(["XAF", "EUR"]),
    operator=st.sampled_from(["MTN", "ORANGE"]),
    operator_reference=st.sampled_from(["op-1", "op-2"]),
    reason=st.just(None),
).filter(lambda truth: (truth.amount, truth.currency) != (500, "XAF"))


@PAIRS
@given(st.data())
def test_a_link_the_provider_reports_paid_another_amount_ends_failed_with_its_figures_whatever_the_expiry_did(
    data: st.DataObject,
) -> None:
    """Money that reached the provider for another amount than asked: every schedule of a link's facts, its
    expiry anywhere among them, ends FAILED amount_mismatch, final from a seq no expiry was shown at."""
    truth, facts = data.draw(histories(initiated=True, complete=True, link=True, truth=paid_another_amount))
    for _ in range(2):
        run = play(facts, data.draw(schedules(len(facts))), final_is_fixed=True)
        final = run.copies[0]
        assert final is not None and final.kind == "link"
        assert (final.status, final.reason) == (PaymentStatus.FAILED, AMOUNT_MISMATCH), final
        assert final.provider_amount in (truth.amount, None) and final.provider_currency in (truth.currency, None)
        assert final.final_seq is not None and final.final_seq <= final.seq


@RULE
@given(st.data())
def test_after_the_write_back_redis_is_newer_than_every_state_of_a_link_a_socket_could_be_shown(
    data: st.DataObject,
) -> None:
    """The cluster property for links: a socket shown EXPIRED is sent the success Redis ends with (its seq
    is higher), and none was told the success at a seq where another copy showed the expiry."""
    _, facts = data.draw(histories(initiated=True, link=True))
    final, held = play_cluster(facts, data.draw(cluster_schedules(facts)))
    assert final is not None and not final.orphan
    for shown in held:
        if not shown.orphan and (shown.status, shown.reason, shown.order_id) != (
            final.status,
            final.reason,
            final.order_id,
        ):
            assert final.seq > shown.seq, f"a socket shown {shown} would never be sent {final}"
        if final.status is not PaymentStatus.EXPIRED and shown.status is PaymentStatus.EXPIRED:
            assert final.final_seq is not None and final.final_seq > shown.seq, f"{shown} counted as told {final}"


# -- counterexamples hypothesis found: promises that do not hold today ----------------------------


def test_a_success_without_an_amount_stays_pending_through_a_write_back() -> None:
    """The provider's SUCCESSFUL without an amount is never believed (issue 31), whichever copy heard it:
    the owned copy does not move, and a degraded instance's orphan copy merged into it does not move it."""
    truth = Truth("SUCCESSFUL", 5, "XAF", "MTN", "op-1", None)
    redis = decide(owned(), truth.claim("SUCCESSFUL"), T0)  # the provider's answer had no amount
    assert not redis.applied and redis.outcome == "unconfirmed" and redis.payment == owned()
    degraded = decide(None, truth.claim("SUCCESSFUL", frozenset({"currency"})), T0).payment  # another instance
    assert degraded is not None and degraded.orphan
    assert merge(owned(), degraded, T0).payment.status is PaymentStatus.PENDING


def test_two_different_states_never_share_a_seq_across_copies() -> None:
    """In the cluster as it runs: the status, reason and order converge (the cluster property above),
    the details of the final claim (operator) need not. Abstractly (our initiation merged into two
    copies) hypothesis also finds PENDING and SUCCESSFUL at one seq."""
    truth = Truth("SUCCESSFUL", 500, "XAF", "MTN", "op-1", None)
    redis = decide(owned(), truth.complete(), T0).payment  # SUCCESSFUL at seq 2, operator MTN
    degraded = decide(owned(), truth.claim("SUCCESSFUL", frozenset({"amount", "currency"})), T0).payment  # no operator
    assert redis is not None and degraded is not None and redis.seq == degraded.seq == 2
    written_back = merge(redis, degraded, T0).payment  # nothing new for Redis, but newer than the copy shown
    assert (written_back.operator, degraded.operator) == ("MTN", None)
    # A socket of the degraded instance, shown `degraded` at seq 2, is never sent the operator.
    assert written_back.seq > degraded.seq


def test_two_orphans_merge_to_the_same_currency_in_either_order() -> None:
    truth = Truth("SUCCESSFUL", 500, "EUR", "MTN", "op-1", None)
    told = decide(None, truth.claim("SUCCESSFUL", frozenset({"currency"})), T0).payment
    untold = decide(None, truth.claim("SUCCESSFUL"), T0).payment
    assert told is not None and untold is not None
    assert merge(told, untold, T0).payment.currency == merge(untold, told, T0).payment.currency


# -- the per-socket gate ----------------------------------------------------------------------

FINAL_EVENTS = {
    PaymentStatus.SUCCESSFUL: "payment-success",
    PaymentStatus.FAILED: "payment-failed",
    PaymentStatus.EXPIRED: "payment-expired",
}


def sent_to_socket(
    deliveries: list[tuple[int, PaymentStatus, str | None]], last_seq: int | None, *, auth: bool = False
) -> list[tuple[str, int, PaymentStatus]]:
    """What one socket (alice's) is sent, through `Sessions.admit`, as LocalDelivery sends it."""
    sessions = Sessions(max_tracked=10, auth_enabled=auth)
    sessions.open("sid", None)
    if auth:
        sessions.set_identity("sid", Identity(user_id="alice"))
    assert sessions.track("sid", REF, last_seq)
    sent: list[tuple[str, int, PaymentStatus]] = []
    for seq, status, owner in deliveries:
        admission = sessions.admit(
            "sid", REF, seq, status.is_terminal, owner_id=owner, orphan=owner is None, status=status.value
        )
        if admission is Admission.NONE:
            continue
        sent.append(("payment-status", seq, status))
        if admission is Admission.FULL and status.is_terminal:
            sent += [(FINAL_EVENTS[status], seq, status), ("payment-completed", seq, status)]
    return sent


statuses = st.sampled_from(list(PaymentStatus))


@GATE
@given(
    st.lists(st.tuples(st.integers(1, 8), statuses, st.sampled_from(["alice", "bob", None])), max_size=20),
    st.none() | st.integers(0, 4),
    st.booleans(),
)
def test_a_socket_sees_seq_rise_no_pending_after_a_final_status_and_one_completion(
    deliveries: list[tuple[int, PaymentStatus, str | None]], last_seq: int | None, auth: bool
) -> None:
    """Whatever arrives, in whatever order (even states no rule would produce), the socket's view holds."""
    sent = sent_to_socket(deliveries, last_seq, auth=auth)
    statuses_sent = [(seq, status) for name, seq, status in sent if name == "payment-status"]
    seqs = [seq for seq, _ in statuses_sent]
    assert seqs == sorted(set(seqs)), "payment-status seq must strictly increase"
    assert all(seq > (last_seq or 0) for seq in seqs), "nothing at or below last_seq"
    first_final = next((i for i, (_, status) in enumerate(statuses_sent) if status.is_terminal), len(statuses_sent))
    assert all(status.is_terminal for _, status in statuses_sent[first_final:]), "PENDING after a final status"
    # After a final status only that status, or SUCCESSFUL after EXPIRED (a link paid after its expiry).
    finals = [status for _, status in statuses_sent[first_final:]]
    changes = [(a, b) for a, b in itertools.pairwise(finals) if a is not b]
    assert changes in ([], [(PaymentStatus.EXPIRED, PaymentStatus.SUCCESSFUL)]), changes
    completed = [status for name, _, status in sent if name == "payment-completed"]
    assert len(completed) <= 1 or completed == [PaymentStatus.EXPIRED, PaymentStatus.SUCCESSFUL], completed
    told = [status for name, _, status in sent if name in FINAL_EVENTS.values()]
    assert told == completed
    if auth:  # bob's payment and an orphan are never sent to alice
        visible = {(seq, status) for seq, status, owner in deliveries if owner == "alice"}
        assert set(statuses_sent) <= visible


@st.composite
def lawful_histories(draw: st.DrawFn) -> list[tuple[int, PaymentStatus]]:
    """States one payment goes through under the rule: PENDING states, then one final status (maybe re-merged),
    or for a link EXPIRED then SUCCESSFUL (paid after its expiry)."""
    pending = draw(st.integers(1, 3))
    final = draw(st.sampled_from([PaymentStatus.SUCCESSFUL, PaymentStatus.FAILED, PaymentStatus.EXPIRED]))
    finals = draw(st.integers(0, 2))
    history = [(seq, PaymentStatus.PENDING) for seq in range(1, pending + 1)] + [
        (seq, final) for seq in range(pending + 1, pending + 1 + finals)
    ]
    if final is PaymentStatus.EXPIRED and finals and draw(st.booleans()):
        paid = draw(st.integers(1, 2))
        history += [(seq, PaymentStatus.SUCCESSFUL) for seq in range(len(history) + 1, len(history) + 1 + paid)]
    return history


@GATE
@given(st.data())
def test_a_socket_ends_on_the_newest_state_it_was_delivered_and_completes_once(data: st.DataObject) -> None:
    history = data.draw(lawful_histories())
    delivered = data.draw(st.lists(st.sampled_from(history), min_size=1, max_size=12))
    deliveries = [(seq, status, "alice") for seq, status in delivered]
    sent = sent_to_socket(deliveries, None)
    newest = max(delivered)
    assert [(seq, status) for name, seq, status in sent if name == "payment-status"][-1] == newest
    completions = [status for name, _, status in sent if name == "payment-completed"]
    assert completions[-1:] == ([newest[1]] if newest[1].is_terminal else [])
    assert len(completions) <= 1 or completions == [PaymentStatus.EXPIRED, PaymentStatus.SUCCESSFUL]
