"""The audit ledger: append-only, a hash chain per run, heads sealed in signed checkpoints.

Each run's entries form their own chain (entry n commits to entry n-1), so writers of different runs
never wait on one lock: an append locks only its run's head row. A checkpointer (at run close, and
periodically in every process that holds a signer) commits the heads that changed into a Merkle
tree, chains the checkpoint to the one before, and signs it with a Vault Transit key the writers may
use but nobody can export (`lockgate.activities.anchor`); the newest checkpoint is also witnessed
outside the database. `verify` streams the ledger in bounded memory and says up to where it is
proven (`lockgate.evidence` holds the pure checks).

Appends are idempotent by `event_key`, so an activity retried after a crash never writes a second
row. Entries hold ids, digests and summaries: never a secret value.

The package: `store` (tables, appends, the authenticated reads), `checkpoints` (signing what lockgate
wrote), `verification` (streams and proofs), `events` (one model per entry kind), `rowkey` (row
MACs), `migrate` (the schema's Alembic migrations).
"""

from __future__ import annotations

from lockgate.activities.ledger.checkpoints import SEAL_COALESCE, Checkpointing
from lockgate.activities.ledger.store import (
    CHECKPOINT_INTERVAL,
    LEDGER_RUN_ID,
    UNAUTHENTIC_KIND,
    LedgerEntry,
    LedgerMissing,
    LedgerRead,
    PolicyBundleRecord,
    PoolLimits,
    Signer,
    ledger_name,
)
from lockgate.activities.ledger.verification import PENDING_GRACE, Verification, VerifyReport
from lockgate.evidence import GENESIS

__all__ = [
    "CHECKPOINT_INTERVAL",
    "GENESIS",
    "LEDGER_RUN_ID",
    "PENDING_GRACE",
    "SEAL_COALESCE",
    "UNAUTHENTIC_KIND",
    "Ledger",
    "LedgerEntry",
    "LedgerMissing",
    "LedgerRead",
    "PolicyBundleRecord",
    "PoolLimits",
    "Signer",
    "VerifyReport",
    "ledger_name",
]


class Ledger(Checkpointing, Verification):
    """The ledger at a SQLAlchemy URL (SQLite by default, PostgreSQL for many workers): storage,
    checkpoints and verification."""
