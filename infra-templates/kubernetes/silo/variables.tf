variable "runbot_silo_name" {
  type        = string
  description = "Name of the silo (provided by runbot); names the shared namespace."

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", var.runbot_silo_name))
    error_message = "runbot_silo_name must be a DNS label of at most 40 characters."
  }
}

variable "kubeconfig_path" {
  type        = string
  description = "kubeconfig file of the cluster runbot deploys to."
  default     = "~/.kube/config"
}

variable "kube_context" {
  type        = string
  description = "kubeconfig context to use. Empty: the file's current context."
  default     = ""
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

variable "domain" {
  type        = string
  description = "Base domain of the previews; environment N is served at pr-N.<domain>. A wildcard DNS record *.<domain> must point at the ingress controller."
}

variable "ingress_class" {
  type        = string
  description = "IngressClass of the controller that serves the previews."
  default     = "nginx"
}

variable "namespace_prefix" {
  type        = string
  description = "Prefix of every namespace this silo and its instances create."
  default     = "runbot"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$", var.namespace_prefix))
    error_message = "namespace_prefix must be a DNS label of at most 16 characters."
  }
}

variable "cluster_issuer" {
  type        = string
  description = "cert-manager ClusterIssuer that signs each preview's certificate. Empty: plain HTTP."
  default     = ""
}
