# Provided by runbot for every environment.

variable "runbot_instance_id" {
  type        = string
  description = "Unique environment id, e.g. pr-42-k3x9q."
}

variable "runbot_slot" {
  type        = number
  description = "Slot runbot reserved in the silo; sets the listener rule priority, so it is unique per silo."

  validation {
    condition     = var.runbot_slot >= 0 && var.runbot_slot < 49000
    error_message = "runbot_slot must be between 0 and 48999 (ALB rule priorities end at 50000)."
  }
}

variable "runbot_pr_number" {
  type        = number
  description = "Pull request number; the environment is served at pr-<number>.<domain>."
}

variable "runbot_head_sha" {
  type        = string
  description = "Commit SHA of the pull request head; the default image tag."
}

variable "runbot_head_ref" {
  type        = string
  description = "Branch name of the pull request head (untrusted text; passed to the container as data only)."
}

variable "runbot_repository" {
  type        = string
  description = "Repository full name, owner/name."
}

variable "runbot_suspended" {
  type        = bool
  description = "true scales the service to zero tasks; false scales it back to one."
  default     = false
}

# Outputs of the silo.

variable "region" {
  type        = string
  description = "Silo output: AWS region."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Silo output: subnets for the task."
}

variable "vpc_id" {
  type        = string
  description = "Silo output: VPC of the target group."
}

variable "tasks_security_group_id" {
  type        = string
  description = "Silo output: security group of the task."
}

variable "listener_arn" {
  type        = string
  description = "Silo output: ALB listener to attach the host-header rule to."
}

variable "domain" {
  type        = string
  description = "Silo output: base domain of the previews."
}

variable "url_scheme" {
  type        = string
  description = "Silo output: http or https."
}

variable "cluster_arn" {
  type        = string
  description = "Silo output: ECS cluster."
}

variable "execution_role_arn" {
  type        = string
  description = "Silo output: task execution role."
}

variable "log_group_name" {
  type        = string
  description = "Silo output: CloudWatch log group."
}

# Repository configuration.

variable "image" {
  type        = string
  description = "Container image repository without tag, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/webshop."
}

variable "image_tag" {
  type        = string
  description = "Image tag to deploy. Empty: the head SHA (CI pushes one image per commit)."
  default     = ""
}

variable "container_port" {
  type        = number
  description = "Port the application listens on inside the container."
  default     = 8080
}

variable "health_check_path" {
  type        = string
  description = "Path the load balancer probes; must answer 2xx or 3xx."
  default     = "/"
}

variable "cpu" {
  type        = number
  description = "Fargate task CPU units (256 = 0.25 vCPU)."
  default     = 256
}

variable "memory" {
  type        = number
  description = "Fargate task memory in MiB; must be valid for the chosen cpu."
  default     = 512
}

variable "environment" {
  type        = map(string)
  description = "Extra plain environment variables for the container. Do not put secrets here; they end up in the task definition."
  default     = {}
}
