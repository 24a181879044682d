# OpenBao for docker-compose.yml: integrated storage (raft), TLS, an audit device declared here.
# OpenBao 2.7 has no file storage. Paths are the folders the openbao image owns for its user
# (/openbao/file, /openbao/logs); the certificates are Compose secrets (deploy/make-secrets.sh).
# Initialise with Shamir shares 5/3 or configure a seal stanza for auto-unseal: deploy/README.md.
storage "raft" {
  path    = "/openbao/file"
  node_id = "openbao-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/openbao/tls/openbao.crt"
  tls_key_file    = "/openbao/tls/openbao.key"
  tls_min_version = "tls12"
}

# Every request and response, HMAC'd secrets, to a 0600 file in the openbao-audit volume. With a
# declared audit device OpenBao refuses requests it cannot log.
audit "file" "main" {
  options {
    file_path = "/openbao/logs/audit.log"
    mode      = "0600"
  }
}

api_addr     = "https://openbao:8200"
cluster_addr = "https://openbao:8201"
# Raft keeps its data in memory-mapped files: mlock would pin all of it. Swap off on the host instead.
disable_mlock = true
ui            = false
