"""Every row carries the MAC of the lockgate worker that wrote it (issue 26.3). Rows written before
carry none: `lockgate verify` reports them as not authenticated, readers ignore them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "mac" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("ledger")}:
        op.add_column("ledger", sa.Column("mac", sa.String, nullable=False, server_default=""))


def downgrade() -> None:
    raise RuntimeError("the ledger's migrations are forward-only: an audit trail is never rolled back")
