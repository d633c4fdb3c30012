output "runbot_capacity" {
  description = "How many environments runbot may place in this silo."
  value       = var.capacity
}

output "region" {
  description = "AWS region of the silo."
  value       = var.region
}

output "vpc_id" {
  description = "VPC the instances run in."
  value       = aws_vpc.this.id
}

output "subnet_ids" {
  description = "Public subnets (two availability zones) for the instances' tasks."
  value       = aws_subnet.public[*].id
}

output "tasks_security_group_id" {
  description = "Security group for the instances' tasks (reachable from the ALB only)."
  value       = aws_security_group.tasks.id
}

output "listener_arn" {
  description = "ALB listener the instances attach their host-header rules to."
  value       = aws_lb_listener.main.arn
}

output "alb_dns_name" {
  description = "DNS name of the load balancer; *.<domain> must resolve to it."
  value       = aws_lb.this.dns_name
}

output "domain" {
  description = "Base domain of the previews."
  value       = var.domain
}

output "url_scheme" {
  description = "https when a certificate is configured, else http."
  value       = local.https ? "https" : "http"
}

output "cluster_arn" {
  description = "ECS cluster the instances' services run in."
  value       = aws_ecs_cluster.this.arn
}

output "execution_role_arn" {
  description = "Task execution role (image pulls, log shipping) for the instances."
  value       = aws_iam_role.execution.arn
  # Instances must not start tasks before the role may pull images.
  depends_on = [aws_iam_role_policy_attachment.execution]
}

output "log_group_name" {
  description = "CloudWatch log group the instances' containers log to."
  value       = aws_cloudwatch_log_group.previews.name
}
