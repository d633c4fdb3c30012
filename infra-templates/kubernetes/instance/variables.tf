# Provided by runbot for every environment.

variable "runbot_instance_id" {
  type        = string
  description = "Unique environment id, e.g. pr-42-k3x9q; names the namespace."
}

variable "runbot_slot" {
  type        = number
  description = "Slot runbot reserved in the silo (unused here: hosts, not ports, keep environments apart)."
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
  description = "true scales the Deployment to zero replicas; false scales it back to one."
  default     = false
}

# Outputs of the silo.

variable "domain" {
  type        = string
  description = "Silo output: base domain of the previews."
}

variable "ingress_class" {
  type        = string
  description = "Silo output: IngressClass of the previews."
}

variable "namespace_prefix" {
  type        = string
  description = "Silo output: prefix of the environment's namespace."
}

variable "cluster_issuer" {
  type        = string
  description = "Silo output: cert-manager ClusterIssuer; empty for plain HTTP."
}

variable "kubeconfig_path" {
  type        = string
  description = "Silo output: kubeconfig file of the cluster."
}

variable "kube_context" {
  type        = string
  description = "Silo output: kubeconfig context; empty for the file's current context."
}

# Repository configuration.

variable "image" {
  type        = string
  description = "Container image repository without tag, e.g. ghcr.io/octo-org/webshop."
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
  description = "HTTP path of the readiness probe."
  default     = "/"
}

variable "environment" {
  type        = map(string)
  description = "Extra plain environment variables for the container. Do not put secrets here."
  default     = {}
}
