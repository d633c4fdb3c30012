# What this environment costs per hour, for runbot's cost ledger (runbot_hourly_cost and
# runbot_hourly_cost_asleep in outputs.tf). An estimate: the pod's resource requests priced at
# GKE Autopilot's on-demand general-purpose pod prices in us-central1, as of 2025 ($0.0445 per
# vCPU-hour, $0.0049225 per GiB-hour). On a cluster you already pay for by the node, the
# marginal cost is lower; set the prices to what a vCPU and a GiB cost you.
# Not counted: the cluster itself, its ingress or load balancer (the silo's), egress.

variable "price_vcpu_hour" {
  type        = number
  description = "Price of one requested vCPU per hour (GKE Autopilot us-central1: 0.0445)."
  default     = 0.0445
}

variable "price_gib_hour" {
  type        = number
  description = "Price of one requested GiB of memory per hour (GKE Autopilot us-central1: 0.0049225)."
  default     = 0.0049225
}

locals {
  # The app container's requests in main.tf (50m CPU, 64Mi memory).
  cpu_request_millicores = 50
  memory_request_mib     = 64
  hourly_cost = (
    local.cpu_request_millicores / 1000 * var.price_vcpu_hour
    + local.memory_request_mib / 1024 * var.price_gib_hour
  )
  # Asleep the Deployment has no replica: nothing is requested.
  hourly_cost_asleep = 0
}
