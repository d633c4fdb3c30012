output "url" {
  description = "Address of the environment: through the silo's ingress (<ingress_url><id>/), or the slot's port for a silo without one."
  value       = local.url
}

output "direct_url" {
  description = "The slot's own port, bypassing the ingress (no traffic report, no wake-up)."
  value       = local.direct_url
}

output "port" {
  description = "TCP port the server listens on (port_base + runbot_slot)."
  value       = local.port
}

output "runbot_app_log" {
  description = "The app's log file (its output and the supervisor's lines); \"\" without a source directory."
  value       = var.runbot_source_dir == "" ? "" : "${local.instance_dir}/app.log"
}

output "runbot_wakes_on_request" {
  description = "The url goes through the silo's ingress, which wakes a sleeping environment on its first request: the status comment says to open it."
  value       = true
}

output "runbot_wait_for_url" {
  description = "runbot asks the url after each apply until it answers (the run's url phase), before it shows the environment ready."
  value       = true
}
