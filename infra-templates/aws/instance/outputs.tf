output "url" {
  description = "Address of the preview environment."
  value       = "${var.url_scheme}://${local.host}/"
}

output "service_name" {
  description = "ECS service running the environment."
  value       = aws_ecs_service.this.name
}

# Money per hour while awake and while asleep, in the operator's RUNBOT_CURRENCY (USD here):
# see cost.tf for the prices used and what is counted.
output "runbot_hourly_cost" {
  description = "Estimated cost per hour while awake (USD, AWS us-east-1 on-demand prices)."
  value       = local.hourly_cost
}

output "runbot_hourly_cost_asleep" {
  description = "Estimated cost per hour while asleep (no task runs)."
  value       = local.hourly_cost_asleep
}
