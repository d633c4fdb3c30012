# Provided by runbot for every environment.

variable "runbot_instance_id" {
  type        = string
  description = "Unique environment id, e.g. pr-42-k3x9q; names the instance directory and the server process."

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", var.runbot_instance_id))
    error_message = "runbot_instance_id must be 1-63 characters of letters, digits, '.', '_' or '-'."
  }
}

variable "runbot_slot" {
  type        = number
  description = "Slot runbot reserved in the silo; the server listens on port_base + runbot_slot."

  validation {
    condition     = var.runbot_slot >= 0 && floor(var.runbot_slot) == var.runbot_slot
    error_message = "runbot_slot must be a non-negative integer."
  }
}

variable "runbot_pr_number" {
  type        = number
  description = "Pull request number."
}

variable "runbot_head_sha" {
  type        = string
  description = "Commit SHA of the pull request head being deployed."
}

variable "runbot_head_ref" {
  type        = string
  description = "Branch name of the pull request head. Untrusted: may contain any character."
}

variable "runbot_repository" {
  type        = string
  description = "Repository full name, owner/name."
}

variable "runbot_suspended" {
  type        = bool
  description = "true stops the server but keeps the files; false starts it again."
  default     = false
}

variable "runbot_source_dir" {
  type        = string
  description = "Read-only directory holding the head commit's files; \"\" when runbot has none (the page is served)."
  default     = ""
}

# Outputs of the silo.

variable "port_base" {
  type        = number
  description = "Silo output: first TCP port of the silo."
}

variable "shared_dir" {
  type        = string
  description = "Silo output: shared directory holding server.py and the instance directories."

  validation {
    condition     = startswith(var.shared_dir, "/")
    error_message = "shared_dir must be an absolute path."
  }
}

variable "bind_host" {
  type        = string
  description = "Silo output: address the server listens on."
}

variable "ingress_url" {
  type        = string
  description = "Silo output: the silo's ingress; \"\" (a silo without one) makes `url` the slot's own port."
  default     = ""
}

# Repository configuration.

variable "greeting" {
  type        = string
  description = "Heading shown on the environment's page."
  default     = "Hello from runbot"
}

variable "start" {
  type        = string
  description = "Shell command that starts the app in the copied source, with $PORT and $HOST set; \"\" uses the Procfile's web: line."
  default     = ""
}

variable "ready_timeout" {
  type        = number
  description = "Seconds the app has to answer GET / with a status below 500."
  default     = 30

  validation {
    condition     = var.ready_timeout >= 1 && var.ready_timeout <= 3600
    error_message = "ready_timeout must be between 1 and 3600 seconds."
  }
}
