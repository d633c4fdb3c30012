output "url" {
  description = "Address of the environment's page."
  value       = "http://${local.url_host}:${local.port}/"
}

output "port" {
  description = "TCP port the server listens on (port_base + runbot_slot)."
  value       = local.port
}

output "runbot_app_log" {
  description = "The app's log file (its output and the supervisor's lines); \"\" without a source directory."
  value       = var.runbot_source_dir == "" ? "" : "${local.instance_dir}/app.log"
}
