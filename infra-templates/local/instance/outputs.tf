output "url" {
  description = "Address of the environment's page."
  value       = "http://${local.url_host}:${local.port}/"
}

output "port" {
  description = "TCP port the server listens on (port_base + runbot_slot)."
  value       = local.port
}
