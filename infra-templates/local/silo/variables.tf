variable "runbot_silo_name" {
  type        = string
  description = "Name of the silo (provided by runbot)."
}

variable "runbot_workspace_dir" {
  type        = string
  description = "Absolute directory runbot owns for this silo (provided by runbot). The shared directory is created inside it."

  validation {
    condition     = startswith(var.runbot_workspace_dir, "/")
    error_message = "runbot_workspace_dir must be an absolute path."
  }
}

variable "port_base" {
  type        = number
  description = "First TCP port; the instance in slot N listens on port_base + N."
  default     = 47100

  validation {
    condition     = var.port_base >= 1024 && var.port_base <= 65535
    error_message = "port_base must be between 1024 and 65535."
  }
}

variable "capacity" {
  type        = number
  description = "How many instances (slots) this silo can hold at once."
  default     = 20

  validation {
    condition     = var.capacity >= 1
    error_message = "capacity must be at least 1."
  }
}

variable "bind_host" {
  type        = string
  description = "Address the instance servers listen on. Keep the loopback default unless a proxy in front needs another one."
  default     = "127.0.0.1"
}

variable "runbot_api_url" {
  type        = string
  description = "Where the ingress reaches runbot's silo API (provided by runbot); \"\": traffic is not reported and nothing wakes on a request."
  default     = ""
}

variable "runbot_silo_token" {
  type        = string
  description = "The silo's token for runbot's silo API (provided by runbot, rotated with `runbot silo rotate-token`)."
  default     = ""
  sensitive   = true
}

variable "ingress_port" {
  type        = number
  description = "Port of the silo's one ingress (the environments' URLs); 0: port_base - 1."
  default     = 0

  validation {
    condition     = var.ingress_port == 0 || (var.ingress_port >= 1024 && var.ingress_port <= 65535)
    error_message = "ingress_port must be 0 (port_base - 1) or between 1024 and 65535."
  }
}

variable "report_interval" {
  type        = number
  description = "Seconds between the ingress's traffic reports to runbot."
  default     = 5

  validation {
    condition     = var.report_interval >= 0.1 && var.report_interval <= 3600
    error_message = "report_interval must be between 0.1 and 3600 seconds."
  }
}

variable "pool_size" {
  description = "Instances runbot keeps applied ahead of PRs, for each repository using this silo (the warm pool; 0: none)."
  type        = number
  default     = 0

  validation {
    condition     = var.pool_size >= 0 && var.pool_size == floor(var.pool_size)
    error_message = "pool_size must be a whole number, 0 or more."
  }
}
