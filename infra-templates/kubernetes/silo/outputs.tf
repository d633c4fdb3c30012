output "runbot_capacity" {
  description = "How many environments runbot may place in this silo."
  value       = var.capacity
}

output "domain" {
  description = "Base domain of the previews."
  value       = kubernetes_config_map_v1.settings.data.domain
}

output "ingress_class" {
  description = "IngressClass the instances' Ingresses use."
  value       = var.ingress_class
}

output "namespace_prefix" {
  description = "Prefix of the instances' namespaces."
  value       = var.namespace_prefix
}

output "cluster_issuer" {
  description = "cert-manager ClusterIssuer for the instances' certificates (empty: HTTP only)."
  value       = var.cluster_issuer
}

output "kubeconfig_path" {
  description = "kubeconfig file the instances deploy with."
  value       = var.kubeconfig_path
}

output "kube_context" {
  description = "kubeconfig context the instances deploy with."
  value       = var.kube_context
}
