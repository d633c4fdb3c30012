"""The queue of recorded webhook deliveries: leasing one at a time, safely across replicas."""

from __future__ import annotations

import collections
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select

from app.db.models import Delivery, utcnow
from app.db.session import Database
from app.github.intake import ACTIVITY

#: Pending deliveries listed per query by `DeliveryQueue.claim`.
CLAIM_BATCH = 50


def claimable_deliveries(now: Any, lease: timedelta) -> tuple[Any, ...]:
    """Pending, and either never leased or with a lease that lapsed."""
    return (
        Delivery.status == "pending",
        or_(col(Delivery.processed_at).is_(None), col(Delivery.processed_at) < now - lease),
    )


def oldest_claimable(now: Any, lease: timedelta, limit: int) -> Any:
    """Ids only, oldest first: answered from ix_delivery_claim alone."""
    return (
        select(Delivery.id)
        .where(*claimable_deliveries(now, lease))
        .order_by(col(Delivery.received_at))
        .limit(limit)
    )


class DeliveryQueue:
    """Deliveries in the order they arrived; `processed_at` doubles as a pending one's lease."""

    def __init__(self, db: Database, lease: timedelta) -> None:
        self.db = db
        self.lease = lease
        self._candidates: collections.deque[str] = collections.deque()
        # The last listing found nothing, and every delivery recorded since was hinted: no
        # older one waits unlisted, so a hinted one may go first without breaking the order.
        self._drained = True

    def hint(self, delivery_id: str) -> None:
        """A delivery was just recorded by this process. When the queue is idle, lease it by
        key (one conditional UPDATE) instead of listing the queue first: that query sat on the
        way to every create. During a flood the listing order stands: once one delivery waits
        unlisted, none is hinted until a listing finds the queue empty (else, webhooks sent one
        by one each looked alone, and one recorded as the queue emptied went ahead of older
        ones: in a burst of PRs, later PRs took the warm pool's instances)."""
        if self._drained and not self._candidates and ACTIVITY.alone():
            self._candidates.append(delivery_id)
        else:
            self._drained = False

    def claim(self) -> Delivery | None:
        """Lease the oldest pending delivery.

        Candidates are listed in batches, ids only, in index order (`oldest_claimable`), and
        each is leased by primary key with a conditional UPDATE that exactly one replica wins.
        Listing them once per delivery by scanning and sorting the pending rows made a backlog
        of N deliveries cost O(N^2): 35% of the serve process's CPU under a webhook flood.
        """
        now = utcnow()
        claimable = claimable_deliveries(now, self.lease)
        for _ in range(2):
            while self._candidates:
                delivery_id = self._candidates.popleft()
                with self.db.session() as session:
                    result = session.exec(
                        update(Delivery)
                        .where(col(Delivery.id) == delivery_id, *claimable)
                        .values(processed_at=now, attempts=Delivery.attempts + 1)
                    )
                    session.commit()
                    if result.rowcount == 1:
                        return session.get(Delivery, delivery_id)
            with self.db.session() as session:
                found = session.exec(oldest_claimable(now, self.lease, CLAIM_BATCH)).all()
            self._drained = not found
            if not found:
                return None
            self._candidates.extend(found)
        return None

    def renew(self, delivery_id: str) -> None:
        with self.db.session() as session:
            row = session.get(Delivery, delivery_id)
            if row is not None and row.status == "pending":
                row.processed_at = utcnow()
                session.add(row)
                session.commit()

    def retry_in(self, delivery_id: str, seconds: float) -> None:
        """Leave it pending, claimable again once ``seconds`` have passed."""
        with self.db.session() as session:
            row = session.get(Delivery, delivery_id)
            if row is not None:
                row.processed_at = utcnow() - self.lease + timedelta(seconds=seconds)
                session.add(row)
                session.commit()

    def finish(self, delivery_id: str, status: str, error: str | None = None) -> None:
        with self.db.session() as session:
            row = session.get(Delivery, delivery_id)
            if row is not None:
                row.status, row.error, row.processed_at = status, error, utcnow()
                session.add(row)
                session.commit()
