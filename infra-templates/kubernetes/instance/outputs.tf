output "url" {
  description = "Address of the preview environment."
  value       = local.url
}

output "namespace" {
  description = "Namespace holding everything of this environment."
  value       = kubernetes_namespace_v1.this.metadata[0].name
}
