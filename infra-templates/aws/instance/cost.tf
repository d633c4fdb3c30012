# What this environment costs per hour, for runbot's cost ledger (runbot_hourly_cost and
# runbot_hourly_cost_asleep in outputs.tf). An estimate from AWS on-demand list prices in
# us-east-1 (Linux/x86 Fargate), as of 2025; set these to your region's or your discount's.
# Counted: the Fargate task (vCPU and memory) and the public IPv4 address it is given.
# Not counted: the silo's shared load balancer, NAT and VPC (the silo's cost, not one PR's),
# CloudWatch Logs and data transfer (by usage). The target group and listener rule are free.

variable "price_fargate_vcpu_hour" {
  type        = number
  description = "Fargate price per vCPU-hour (us-east-1 on-demand: 0.04048)."
  default     = 0.04048
}

variable "price_fargate_gb_hour" {
  type        = number
  description = "Fargate price per GB of memory per hour (us-east-1 on-demand: 0.004445)."
  default     = 0.004445
}

variable "price_public_ipv4_hour" {
  type        = number
  description = "Price of an in-use public IPv4 address per hour (AWS: 0.005)."
  default     = 0.005
}

locals {
  # While asleep the service runs no task (desired_count 0): no compute, no public address.
  hourly_cost = (
    var.cpu / 1024 * var.price_fargate_vcpu_hour
    + var.memory / 1024 * var.price_fargate_gb_hour
    + var.price_public_ipv4_hour
  )
  hourly_cost_asleep = 0
}
