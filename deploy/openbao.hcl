# OpenBao for docker-compose.yml: file storage, TLS terminated in front of it in real deployments.
storage "file" {
  path = "/openbao/file"
}
listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}
api_addr = "http://openbao:8200"
ui       = true
