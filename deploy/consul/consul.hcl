# Settings of the Consul agent in docker-compose.consul.yml, on top of
# `agent -dev` (one server that elects itself and keeps everything in
# memory). The local topology (testkit::ConsulAgent) runs the same agent
# with the same settings as flags, on 127.0.0.1.
log_level            = "warn"
disable_update_check = true

# The web UI on the HTTP port: http://localhost:8500/ui
ui_config {
  enabled = true
}

# Only the HTTP API is used; no DNS or gRPC listeners.
ports {
  dns      = -1
  grpc     = -1
  grpc_tls = -1
}
