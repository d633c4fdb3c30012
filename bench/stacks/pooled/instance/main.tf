# The `pool` benchmark's instance: a PR-independent part that takes 5 s (`base`: its triggers
# hold no PR value, so a warm instance has it done already) and a PR-specific part of about
# 0.3 s (`page`: the PR's number and head SHA), served on the slot's port by the local stack's
# page server, which reads the page on every request.
terraform {
  required_version = ">= 1.6.0"
}

variable "runbot_instance_id" {
  type = string
}

variable "runbot_slot" {
  type = number
}

variable "runbot_pr_number" {
  type = number
}

variable "runbot_head_sha" {
  type = string
}

variable "runbot_repository" {
  type = string
}

variable "port_base" {
  type = number
}

variable "shared_dir" {
  type = string
}

variable "server_script" {
  type = string
}

locals {
  port = var.port_base + var.runbot_slot
  server_env = {
    SCRIPT              = var.server_script
    RUNBOT_INSTANCE_ID  = var.runbot_instance_id
    RUNBOT_INSTANCE_DIR = "${trimsuffix(var.shared_dir, "/")}/${var.runbot_instance_id}"
    RUNBOT_BIND_HOST    = "127.0.0.1"
    RUNBOT_PORT         = tostring(local.port)
  }
  page_json = jsonencode({
    repository  = var.runbot_repository
    pr_number   = var.runbot_pr_number
    head_sha    = var.runbot_head_sha
    head_ref    = ""
    instance_id = var.runbot_instance_id
  })
}

# The PR-independent part: 5 s, then the instance directory. Its destroy stops the server.
resource "terraform_data" "base" {
  input            = local.server_env
  triggers_replace = local.server_env

  provisioner "local-exec" {
    command     = "sleep 5 && mkdir -p -- \"$RUNBOT_INSTANCE_DIR\""
    environment = self.input
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "python3 \"$SCRIPT\" stop; rm -rf -- \"$RUNBOT_INSTANCE_DIR\""
    environment = self.input
  }
}

# The PR-specific part: about 0.3 s, then the page with the PR's values.
resource "terraform_data" "page" {
  triggers_replace = {
    dir  = terraform_data.base.output.RUNBOT_INSTANCE_DIR
    page = local.page_json
  }

  provisioner "local-exec" {
    command     = "sleep 0.25 && python3 \"$SCRIPT\" write-page"
    environment = merge(local.server_env, { RUNBOT_PAGE_JSON = local.page_json })
  }
}

# The page server, started once per instance: a new PR value only rewrites the page.
resource "terraform_data" "server" {
  input            = terraform_data.base.output
  triggers_replace = terraform_data.base.output

  provisioner "local-exec" {
    command     = "python3 \"$SCRIPT\" start"
    environment = self.input
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "python3 \"$SCRIPT\" stop"
    environment = self.input
  }

  depends_on = [terraform_data.page]
}

output "url" {
  value = "http://127.0.0.1:${local.port}/"
}

output "head_sha" {
  value = var.runbot_head_sha
}

output "runbot_wait_for_url" {
  value = true
}
