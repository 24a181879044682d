#!/bin/sh
# The lockgate image's entrypoint: secrets come in as files, never as values in a compose file or a
# pod spec, then the command runs (exec: it gets the signals, the shell is gone).
#
# - LOCKGATE_*_FILE, VAULT_TOKEN_FILE and TEMPORAL_API_KEY_FILE=/path become the variable without
#   _FILE, set to the file's content (trailing newlines dropped): the *_FILE convention of Docker's
#   own images, e.g. LOCKGATE_LEDGER_URL_FILE. An empty file leaves the variable unset (the set-up's
#   token after its first run). Only these names: other tools' *_FILE variables (paths meant as
#   paths) are left alone.
# - LOCKGATE_ENV_FROM=/path: KEY=VALUE lines (blank lines and # comments skipped), read as data and
#   never executed; what `lockgate setup` leaves for the worker (its AppRole role id and secret id).
#   A variable already set in the environment wins over the file.
set -eu

die() {
  echo "lockgate-entrypoint: $*" >&2
  exit 2
}

for name in $(env | sed -n -e 's/^\(LOCKGATE_[A-Z0-9_]*\)_FILE=.*/\1/p' -e 's/^\(VAULT_TOKEN\|TEMPORAL_API_KEY\)_FILE=.*/\1/p'); do
  eval "path=\${${name}_FILE}"
  [ -r "$path" ] || die "${name}_FILE: cannot read $path"
  value=$(cat "$path")
  unset "${name}_FILE"
  if [ -n "$value" ]; then export "$name=$value"; else unset "$name"; fi
done

if [ -n "${LOCKGATE_ENV_FROM:-}" ]; then
  [ -r "$LOCKGATE_ENV_FROM" ] || die "LOCKGATE_ENV_FROM: cannot read $LOCKGATE_ENV_FROM (has \`lockgate setup\` run?)"
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    key=${line%%=*}
    value=${line#*=}
    case "$key" in *[!A-Za-z0-9_]* | [0-9]* | '') die "LOCKGATE_ENV_FROM: not a KEY=VALUE line: ${key}" ;; esac
    if eval "[ -z \"\${${key}+set}\" ]"; then
      export "$key=$value"
    fi
  done <"$LOCKGATE_ENV_FROM"
fi

exec "$@"
