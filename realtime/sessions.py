"""What this instance knows about its own sockets: who each one is, what it tracks, what it has been sent.

This registry is what keeps the per-connection guarantee of docs/API.md,
whatever order messages arrive in (live emits, pub/sub from other instances,
catch-up on `track-payment`, resync after an outage):

- `admit` lets an event through to a socket only if its `seq` is above the
  highest this socket has been sent for that payment, so a socket never sees
  `seq` go down or a terminal payment go back to PENDING;
- once a socket has been sent a terminal status, later (higher-seq) states of
  that payment reach it as `payment-status` only, so `payment-success` /
  `payment-failed` and `payment-completed` arrive at most once per connection
  (but for a link's EXPIRED, which the provider's SUCCESSFUL may follow, or a
  FAILED `amount_mismatch` when it paid another amount: then
  `payment-success` or `payment-failed` and its `payment-completed` go out
  too, once);
  and a page that has been sent (or said with `last_seq` that it saw) a seq at
  or past the payment's `final_seq` was told the outcome already, on an
  earlier connection, on another instance or by a track ack: its later
  states are `payment-status` only too, so the completion reaches a page once
  across reconnects;
- nobody is sent a payment they may not see (`auth.access.may_see`).

Everything here is synchronous: a check and its update happen without an
await in between, so concurrent handlers on the loop cannot both pass a cap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from payments.access import Identity, may_see
from payments.model import AMOUNT_MISMATCH, PaymentStatus

_EXPIRED = PaymentStatus.EXPIRED.value
_SUCCESSFUL = PaymentStatus.SUCCESSFUL.value
_FAILED = PaymentStatus.FAILED.value


def _after_expiry(status: str | None, reason: str | None) -> bool:
    """Whether a state may follow an EXPIRED one on a page: the provider's word that the link was paid after
    its expiry, for the amount asked (SUCCESSFUL) or another (FAILED amount_mismatch): payments/state.py."""
    return status == _SUCCESSFUL or (status == _FAILED and reason == AMOUNT_MISMATCH)


class Admission(enum.Enum):
    NONE = "none"  # already seen (or not this socket's to see)
    STATUS = "status"  # newer state of a payment whose outcome this socket already has: payment-status only
    FULL = "full"  # the whole sequence for this state


@dataclass(slots=True)
class Seen:
    """The newest state of one payment sent to one socket."""

    seq: int = 0
    terminal: bool = False
    status: str | None = None  # the final status sent, once there is one


@dataclass(slots=True)
class SocketSession:
    identity: Identity | None
    tracked: dict[str, Seen] = field(default_factory=dict)
    # What was sent for every payment this connection ever tracked (bounded): a stop, a failed track or
    # a re-track must not make the gate forget, or a completion could go out twice on one connection.
    sent: dict[str, Seen] = field(default_factory=dict)


def _open(seen: Seen) -> bool:
    """Whether a socket's payment may still change for it: not final yet, or EXPIRED (a link paid late)."""
    return not seen.terminal or seen.status == _EXPIRED


class Sessions:
    def __init__(self, *, max_tracked: int, auth_enabled: bool) -> None:
        self._max_tracked = max_tracked
        self._auth_enabled = auth_enabled
        self._sessions: dict[str, SocketSession] = {}
        self._trackers: dict[str, set[str]] = {}  # reference -> sids of this instance tracking it

    # -- lifetime -----------------------------------------------------------
    def open(self, sid: str, identity: Identity | None) -> None:
        self._sessions[sid] = SocketSession(identity)

    def close(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        for reference in session.tracked if session else ():
            self._drop_tracker(reference, sid)

    def identity(self, sid: str) -> Identity | None:
        session = self._sessions.get(sid)
        return session.identity if session else None

    def set_identity(self, sid: str, identity: Identity) -> None:
        session = self._sessions.get(sid)
        if session is not None:
            session.identity = identity

    def __contains__(self, sid: object) -> bool:
        return sid in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    # -- tracking -------------------------------------------------------------
    def track(self, sid: str, reference: str, last_seq: int | None) -> bool:
        """Record that `sid` follows `reference`, having seen up to `last_seq`; False if over the cap."""
        session = self._sessions.get(sid)
        if session is None:
            return False
        seen = session.tracked.get(reference)
        if seen is None:
            if len(session.tracked) >= self._max_tracked:
                return False
            seen = session.sent.get(reference) or self._remember(session, reference)
            session.tracked[reference] = seen
            self._trackers.setdefault(reference, set()).add(sid)
        if last_seq is not None and last_seq > seen.seq:
            seen.seq = last_seq
        return True

    def _remember(self, session: SocketSession, reference: str) -> Seen:
        """A new record of what this connection was sent; the oldest untracked ones go past a bound."""
        if len(session.sent) >= 4 * self._max_tracked:
            for old in [r for r in session.sent if r not in session.tracked][: len(session.sent) // 2]:
                del session.sent[old]
        seen = session.sent[reference] = Seen()
        return seen

    def tracks(self, sid: str, reference: str) -> bool:
        """Whether `sid` follows `reference` now."""
        session = self._sessions.get(sid)
        return session is not None and reference in session.tracked

    def untrack(self, sid: str, reference: str) -> None:
        session = self._sessions.get(sid)
        if session is not None and session.tracked.pop(reference, None) is not None:
            self._drop_tracker(reference, sid)

    def _drop_tracker(self, reference: str, sid: str) -> None:
        sids = self._trackers.get(reference)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._trackers[reference]

    def trackers(self, reference: str) -> tuple[str, ...]:
        return tuple(self._trackers.get(reference, ()))

    def tracked_payment_count(self) -> int:
        return len(self._trackers)

    def waiting(self) -> list[str]:
        """References some socket here tracks and has not been sent a final status for, or was sent EXPIRED
        for (a link may still be reported paid after its expiry: the resync must bring that too)."""
        return [
            reference
            for reference, sids in self._trackers.items()
            if any(_open(self._sessions[sid].tracked[reference]) for sid in sids)
        ]

    # -- the gate ---------------------------------------------------------------
    def admit(
        self,
        sid: str,
        reference: str,
        seq: int,
        terminal: bool,
        *,
        owner_id: str | None,
        orphan: bool,
        status: str | None = None,
        final_seq: int | None = None,
        reason: str | None = None,
    ) -> Admission:
        """May `sid` be sent this state of `reference`, and how much of it? Records it as sent.

        `final_seq` is the earliest seq at which the payment showed this final status (to any page): a
        socket whose seq is already there was told the outcome, whatever it was sent on this connection.
        `reason` is a FAILED state's: only `amount_mismatch` may follow an EXPIRED one (`_after_expiry`).
        """
        session = self._sessions.get(sid)
        if session is None:
            return Admission.NONE
        seen = session.tracked.get(reference)
        if seen is None or seq <= seen.seq:
            return Admission.NONE
        if not may_see(session.identity, owner_id, orphan, auth_enabled=self._auth_enabled):
            return Admission.NONE
        # A link the provider reports paid after its expiry (payments/state.py): the one move after a final status.
        reopened = seen.status == _EXPIRED and _after_expiry(status, reason)
        if seen.terminal and not reopened and (not terminal or (status is not None and status != seen.status)):
            return Admission.NONE  # never PENDING, nor the other final status, after a final status
        told = terminal and final_seq is not None and seen.seq >= final_seq
        seen.seq = seq
        if reopened:
            seen.status = status
        if (seen.terminal and not reopened) or told:
            seen.terminal = True
            seen.status = seen.status or status
            return Admission.STATUS
        seen.terminal = terminal
        if terminal:
            seen.status = status
        return Admission.FULL
