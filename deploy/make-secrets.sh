#!/bin/sh
# Writes the secrets docker-compose.yml mounts, into DIR (default: ./secrets beside the compose file):
# random database passwords, the connection URLs built from them, an empty openbao_setup_token
# (paste the root token there for the first `lockgate setup` only: deploy/README.md), and a private
# CA with the certificates of Temporal (mTLS), lockgate's Temporal client and OpenBao.
#
# Never overwrites a file that exists (rotation: deploy/README.md). DIR is 0700 and its files 0644:
# the containers run as other users than you (postgres, temporal, openbao, lockgate's 10001) and
# read the files through their mounts, while on the host only you can reach them. The CA's key
# (tls/ca.key) is mounted nowhere: move it offline once the certificates are issued.
set -eu
umask 022
dir=${1:-./secrets}
days=${CERT_DAYS:-397}
mkdir -p "$dir/tls"
chmod 0700 "$dir"

new() { [ ! -e "$dir/$1" ]; }
put() { # put NAME VALUE: writes a secret once
  if new "$1"; then printf '%s\n' "$2" >"$dir/$1"; fi
}
for name in postgres_password temporal_db_password ledger_migrate_password ledger_worker_password shop_admin_password; do
  put "$name" "$(openssl rand -hex 24)"
done
pw() { cat "$dir/$1"; }
put ledger_url "postgresql+psycopg://lockgate_worker:$(pw ledger_worker_password)@postgresql:5432/lockgate"
put ledger_migrate_url "postgresql+psycopg://lockgate_migrate:$(pw ledger_migrate_password)@postgresql:5432/lockgate"
put shop_dsn "postgresql://shop_admin:$(pw shop_admin_password)@postgresql:5432/shop"
if new openbao_setup_token; then : >"$dir/openbao_setup_token"; fi

tls="$dir/tls"
if new tls/ca.crt; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=lockgate deployment CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 0600 "$tls/ca.key"
fi
cert() { # cert NAME CN EXTENDED_KEY_USAGE [SAN]
  [ -e "$tls/$1.crt" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$tls/$1.key" -out "$tls/$1.csr" 2>/dev/null
  ext="$tls/$1.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$3"
    [ -n "${4:-}" ] && echo "subjectAltName=$4"
  } >"$ext"
  openssl x509 -req -in "$tls/$1.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$tls/$1.crt" 2>/dev/null
  rm -f "$tls/$1.csr" "$ext"
  chmod 0644 "$tls/$1.key" # read by the container's user through its mount; DIR itself is 0700
}
# The Temporal server presents it to clients and to its own services (internode mTLS).
cert temporal temporal serverAuth,clientAuth "DNS:temporal,DNS:localhost,IP:127.0.0.1"
# lockgate's workers, set-up, inbox, the UI and admin tools: client certificate for Temporal.
cert lockgate-client lockgate clientAuth
cert openbao openbao serverAuth "DNS:openbao,DNS:localhost,IP:127.0.0.1"
echo "secrets in $dir (the CA key $tls/ca.key is needed only to issue certificates: keep it offline)"
