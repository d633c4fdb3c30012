locals {
  host      = "pr-${var.runbot_pr_number}.${var.domain}"
  image_tag = var.image_tag != "" ? var.image_tag : var.runbot_head_sha
  # Target group names are limited to 32 characters; a hash keeps them unique per instance.
  short_name = "runbot-${substr(sha1(var.runbot_instance_id), 0, 12)}"

  container_environment = merge(var.environment, {
    RUNBOT_ENVIRONMENT_ID = var.runbot_instance_id
    RUNBOT_REPOSITORY     = var.runbot_repository
    RUNBOT_PR_NUMBER      = tostring(var.runbot_pr_number)
    RUNBOT_HEAD_SHA       = var.runbot_head_sha
    RUNBOT_HEAD_REF       = var.runbot_head_ref
    RUNBOT_URL            = "${var.url_scheme}://${local.host}/"
  })
}

resource "aws_lb_target_group" "this" {
  name                 = local.short_name
  port                 = var.container_port
  protocol             = "HTTP"
  target_type          = "ip" # Fargate tasks register by IP
  vpc_id               = var.vpc_id
  deregistration_delay = 10 # previews need no long connection draining

  health_check {
    path                = var.health_check_path
    matcher             = "200-399"
    interval            = 15
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener_rule" "this" {
  listener_arn = var.listener_arn
  # Slots are unique within a silo, so priorities never collide.
  priority = 1000 + var.runbot_slot

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  condition {
    host_header {
      values = [local.host]
    }
  }
}

resource "aws_ecs_task_definition" "this" {
  family                   = "runbot-${var.runbot_instance_id}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = var.execution_role_arn

  container_definitions = jsonencode([{
    name      = "app"
    image     = "${var.image}:${local.image_tag}"
    essential = true
    portMappings = [{
      containerPort = var.container_port
      protocol      = "tcp"
    }]
    environment = [for name in sort(keys(local.container_environment)) : {
      name  = name
      value = local.container_environment[name]
    }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = var.log_group_name
        awslogs-region        = var.region
        awslogs-stream-prefix = var.runbot_instance_id
      }
    }
  }])
}

resource "aws_ecs_service" "this" {
  name            = "runbot-${var.runbot_instance_id}"
  cluster         = var.cluster_arn
  task_definition = aws_ecs_task_definition.this.arn
  launch_type     = "FARGATE"
  # Suspended environments keep every resource but run no task (and cost no compute).
  desired_count = var.runbot_suspended ? 0 : 1
  # runbot reports the URL once apply returns, so wait for a healthy task when one is wanted.
  wait_for_steady_state = !var.runbot_suspended

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [var.tasks_security_group_id]
    assign_public_ip = true # public subnets without NAT: needed to pull the image
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = "app"
    container_port   = var.container_port
  }

  # ECS refuses a target group that is not yet attached to a listener.
  depends_on = [aws_lb_listener_rule.this]
}
