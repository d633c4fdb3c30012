output "url" {
  description = "Address of the preview environment."
  value       = "${var.url_scheme}://${local.host}/"
}

output "service_name" {
  description = "ECS service running the environment."
  value       = aws_ecs_service.this.name
}
