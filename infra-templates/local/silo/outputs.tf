output "runbot_capacity" {
  description = "How many instances runbot may place in this silo."
  value       = var.capacity
}

output "port_base" {
  description = "First TCP port; instance slot N listens on port_base + N."
  value       = var.port_base
}

output "shared_dir" {
  description = "Directory holding server.py and one sub-directory per instance."
  # Via the script resource so consumers only see the directory once server.py is in it.
  value = dirname(terraform_data.server_script.triggers_replace.script)
}

output "bind_host" {
  description = "Address the instance servers listen on."
  value       = var.bind_host
}

output "admin_token" {
  description = "Silo admin secret (stable across re-applies)."
  value       = sha256("runbot-admin:${terraform_data.admin_token.id}")
  sensitive   = true
}

output "ingress_url" {
  description = "The silo's ingress; environment <id> is at <ingress_url><id>/ (or Host <id>.<anything>)."
  value       = "http://${local.url_host}:${terraform_data.ingress.input.RUNBOT_INGRESS_PORT}/"
}

output "runbot_pool_size" {
  description = "The warm pool runbot keeps in this silo for each repository (capped by the policy's max_pool)."
  value       = var.pool_size
}
