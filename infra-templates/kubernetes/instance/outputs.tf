output "url" {
  description = "Address of the preview environment."
  value       = local.url
}

output "namespace" {
  description = "Namespace holding everything of this environment."
  value       = kubernetes_namespace_v1.this.metadata[0].name
}

# Money per hour while awake and while asleep, in the operator's RUNBOT_CURRENCY (USD here):
# see cost.tf for the prices used and what is counted.
output "runbot_hourly_cost" {
  description = "Estimated cost per hour while awake (USD, the pod's requests at GKE Autopilot prices)."
  value       = local.hourly_cost
}

output "runbot_hourly_cost_asleep" {
  description = "Estimated cost per hour while asleep (no replica)."
  value       = local.hourly_cost_asleep
}
