"""Background work once per cluster (issue 29): the scans the reaper, the archiver and the
checkpointer make every cycle are indexed, and closed runs' histories live in the ledger's database
(every host reads them), not on the disk of whichever worker archived them.

- `ix_ledger_kind_run`: entries by kind (outstanding compensations, archive records): an index scan
  over the rows of that kind, never the whole ledger.
- `ix_ledger_heads_dirty`: the chains a checkpoint must sign. Partial, so an append to a chain that is
  already dirty leaves the indexed values unchanged and stays a HOT update; only the first append
  after a checkpoint touches the index.
- `ix_ledger_heads_open`: chains of runs not yet closed (what the reaper's backlog gauge counts).
- `history_archive`: one row per archived Temporal history (the JSON the UI and CLI write, payloads
  as encrypted as they were in history), keyed by run; its digest is in the ledger (`history.archived`).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    ledger_indexes = {i["name"] for i in insp.get_indexes("ledger")}
    if "ix_ledger_kind_run" not in ledger_indexes:
        op.create_index("ix_ledger_kind_run", "ledger", ["kind", "run_id"])
    head_indexes = {i["name"] for i in insp.get_indexes("ledger_heads")}
    if "ix_ledger_heads_dirty" not in head_indexes:
        op.create_index(
            "ix_ledger_heads_dirty",
            "ledger_heads",
            ["chain"],
            postgresql_where=sa.text("dirty"),
            sqlite_where=sa.text("dirty"),
        )
    if "ix_ledger_heads_open" not in head_indexes:
        op.create_index(
            "ix_ledger_heads_open",
            "ledger_heads",
            ["chain"],
            postgresql_where=sa.text("NOT closed"),
            sqlite_where=sa.text("NOT closed"),
        )
    if not insp.has_table("history_archive"):
        op.create_table(
            "history_archive",
            sa.Column("run_id", sa.String, primary_key=True),
            sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("temporal_run_id", sa.String, nullable=False),
            sa.Column("events", sa.Integer, nullable=False),
            sa.Column("sha256", sa.String, nullable=False),
            sa.Column("content", sa.Text, nullable=False),
            sa.Column("archived_at", sa.String, nullable=False),
        )
    if op.get_bind().dialect.name == "postgresql":
        # The runtime roles that may append to the ledger (RUNTIME_GRANTS) may store archives too:
        # an existing deployment keeps working after `lockgate migrate`, with no new GRANT to run.
        roles = op.get_bind().execute(
            sa.text(
                "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
                "WHERE table_schema = 'public' AND table_name = 'ledger' AND privilege_type = 'INSERT' "
                "AND grantee <> current_user"
            )
        )
        for (role,) in roles:
            quoted = str(role).replace('"', '""')
            op.execute(sa.text(f'GRANT SELECT, INSERT ON history_archive TO "{quoted}"'))


def downgrade() -> None:
    raise RuntimeError("the ledger's migrations are forward-only: an audit trail is never rolled back")
