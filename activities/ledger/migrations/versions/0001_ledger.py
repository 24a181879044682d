"""The ledger as lockgate created it before migrations: per-run chains, checkpoints, keys, meta,
policy bundles and the kill switch's table. A database that already holds them (created by an
earlier lockgate) is adopted as it is.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    if insp.has_table("ledger") and "chain" not in {c["name"] for c in insp.get_columns("ledger")}:
        raise RuntimeError(
            "this database holds a single-chain ledger from before per-run chains: lockgate does not "
            "migrate it and never sets it aside by itself; archive it (e.g. rename the table ledger) "
            "and start a new ledger, or point LOCKGATE_LEDGER_URL elsewhere"
        )
    if not insp.has_table("ledger"):
        op.create_table(
            "ledger",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_key", sa.String, nullable=False),
            sa.Column("run_id", sa.String, nullable=False),
            sa.Column("chain", sa.String, nullable=False),
            sa.Column("chain_seq", sa.Integer, nullable=False),
            sa.Column("kind", sa.String, nullable=False),
            sa.Column("at", sa.String, nullable=False),
            sa.Column("data", sa.String, nullable=False),
            sa.Column("prev_hash", sa.String, nullable=False),
            sa.Column("hash", sa.String, nullable=False),
            sa.Column("recorded_at", sa.String, nullable=False),
            sa.UniqueConstraint("chain", "chain_seq", name="ledger_chain_position"),
        )
        op.create_index("ix_ledger_event_key", "ledger", ["event_key"], unique=True)
    if not insp.has_table("ledger_heads"):
        op.create_table(
            "ledger_heads",
            sa.Column("chain", sa.String, primary_key=True),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("head", sa.String, nullable=False),
            sa.Column("closed", sa.Boolean, nullable=False),
            sa.Column("sealed_size", sa.Integer, nullable=False),
            sa.Column("sealed_final", sa.Boolean, nullable=False),
            sa.Column("dirty", sa.Boolean, nullable=False),
        )
    if not insp.has_table("ledger_checkpoints"):
        op.create_table(
            "ledger_checkpoints",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("body", sa.String, nullable=False),
            sa.Column("hash", sa.String, nullable=False),
            sa.Column("signature", sa.String, nullable=False),
            sa.Column("at", sa.String, nullable=False),
        )
    if not insp.has_table("ledger_checkpoint_heads"):
        op.create_table(
            "ledger_checkpoint_heads",
            sa.Column("checkpoint", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("chain", sa.String, nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("head", sa.String, nullable=False),
            sa.Column("final", sa.Boolean, nullable=False),
        )
        op.create_index("ledger_checkpoint_heads_chain", "ledger_checkpoint_heads", ["chain", "checkpoint"])
    if not insp.has_table("ledger_keys"):
        op.create_table(
            "ledger_keys",
            sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("key_name", sa.String, nullable=False),
            sa.Column("public_key", sa.String, nullable=False),
            sa.Column("recorded_at", sa.String, nullable=False),
        )
    if not insp.has_table("ledger_meta"):
        op.create_table(
            "ledger_meta",
            sa.Column("name", sa.String, primary_key=True),
            sa.Column("value", sa.String, nullable=False),
        )
    if not insp.has_table("policy_bundles"):
        op.create_table(
            "policy_bundles",
            sa.Column("hash", sa.String, primary_key=True),
            sa.Column("content", sa.String, nullable=False),
            sa.Column("registered_at", sa.String, nullable=False),
        )
    if not insp.has_table("freezes"):
        op.create_table(
            "freezes",
            sa.Column("scope", sa.String, primary_key=True),
            sa.Column("frozen", sa.Boolean, nullable=False),
            sa.Column("by", sa.String, nullable=False),
            sa.Column("reason", sa.String, nullable=False),
            sa.Column("at", sa.String, nullable=False),
            sa.Column("evidence", sa.String, nullable=False, server_default=""),
        )


def downgrade() -> None:
    raise RuntimeError("the ledger's migrations are forward-only: an audit trail is never rolled back")
