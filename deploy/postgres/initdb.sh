#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised (the image's docker-entrypoint-initdb.d).
# Roles and databases with the passwords of ./secrets (mounted at /run/secrets):
# - temporal: owns Temporal's two databases (the schema tool runs as it);
# - lockgate_migrate: owns the ledger database (`lockgate setup` migrates as it);
# - lockgate_worker: the runtime role; may connect, the migrations grant it what it uses on tables;
# - shop_admin: the database OpenBao's database engine manages short-lived roles in (CREATEROLE).
# Passwords go in as psql variables, quoted by psql (:'name'), never pasted into SQL text.
set -eu
secrets=${SECRETS_DIR:-/run/secrets}
secret() { cat "$secrets/$1"; }
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v temporal_pw="$(secret temporal_db_password)" \
  -v migrate_pw="$(secret ledger_migrate_password)" \
  -v worker_pw="$(secret ledger_worker_password)" \
  -v shop_pw="$(secret shop_admin_password)" <<'SQL'
CREATE ROLE temporal LOGIN PASSWORD :'temporal_pw';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;

CREATE ROLE lockgate_migrate LOGIN PASSWORD :'migrate_pw';
CREATE ROLE lockgate_worker LOGIN PASSWORD :'worker_pw';
CREATE DATABASE lockgate OWNER lockgate_migrate;
REVOKE ALL ON DATABASE lockgate FROM PUBLIC;
GRANT CONNECT ON DATABASE lockgate TO lockgate_worker;

CREATE ROLE shop_admin LOGIN CREATEROLE PASSWORD :'shop_pw';
CREATE DATABASE shop OWNER shop_admin;
SQL
