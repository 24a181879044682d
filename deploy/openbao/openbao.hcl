# OpenBao for production (issue 28): integrated storage (raft), TLS, an audit device declared here.
# tests/test_production.py runs exactly this file with its paths and ports rewritten to a temp dir:
# keep every path on a line of its own as below. OpenBao 2.7 refuses file storage.
#
# First start: `bao operator init -key-shares=5 -key-threshold=3` (hand the five shares to five
# people; keep none beside the data), unseal with three, `lockgate setup` with the root token and
# `--setup-credentials`, then revoke the root token (`bao token revoke -self`). After every restart:
# three holders run `bao operator unseal`. Auto-unseal (a cloud KMS or another OpenBao's Transit)
# replaces that with a `seal "..." {}` stanza; see the OpenBao docs for your KMS.

storage "raft" {
  path    = "/openbao/data"
  node_id = "openbao-1"
  # More nodes: a retry_join { leader_api_addr = "https://openbao-2:8200"  leader_ca_cert_file = ... }
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/openbao/tls/tls.crt"
  tls_key_file    = "/openbao/tls/tls.key"
  tls_min_version = "tls12"
}

# Every request and response, HMAC'd secrets only; OpenBao refuses requests when no audit device can
# write. Declared here (OpenBao >= 2.3.2 no longer enables audit devices through the API).
audit "file" "main" {
  options {
    file_path = "/openbao/audit/audit.log"
    mode      = "0600"
  }
}

api_addr      = "https://openbao:8200"
cluster_addr  = "https://openbao:8201"
disable_mlock = true  # raft storage: mlock is not needed and containers rarely allow it
ui            = false
