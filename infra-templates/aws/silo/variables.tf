variable "runbot_silo_name" {
  type        = string
  description = "Name of the silo (provided by runbot); used in resource names and tags."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,19}$", var.runbot_silo_name))
    error_message = "runbot_silo_name must be 1-20 characters of lower-case letters, digits or '-' (it ends up in ALB and IAM names)."
  }
}

variable "region" {
  type        = string
  description = "AWS region of the silo."
  default     = "eu-west-1"
}

variable "capacity" {
  type        = number
  description = "How many preview environments runbot may place in this silo at once."
  default     = 20

  validation {
    condition     = var.capacity >= 1
    error_message = "capacity must be at least 1."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the silo VPC; two /24 public subnets are carved from it."
  default     = "10.40.0.0/16"
}

variable "domain" {
  type        = string
  description = "Base domain of the previews; environment N is served at pr-N.<domain>. A wildcard DNS record *.<domain> must point at the ALB (created here when route53_zone_id is set)."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate covering *.<domain>. Empty: plain HTTP on port 80. Set: HTTPS on 443 and HTTP redirects to it."
  default     = ""
}

variable "route53_zone_id" {
  type        = string
  description = "Route 53 hosted zone to create the *.<domain> alias record in. Empty: manage DNS yourself."
  default     = ""
}

variable "log_retention_days" {
  type        = number
  description = "CloudWatch retention of the preview containers' logs."
  default     = 7
}
