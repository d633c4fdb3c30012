# The `pool` benchmark's silo: a shared directory for the instances' page servers, the local
# stack's server.py (run in place, not copied), and the warm pool's size as an output.
terraform {
  required_version = ">= 1.6.0"
}

variable "runbot_workspace_dir" {
  type = string
}

variable "server_script" {
  type        = string
  description = "Absolute path of infra-templates/local/silo/server.py (the page server)."
}

variable "port_base" {
  type = number
}

variable "capacity" {
  type = number
}

variable "pool_size" {
  type    = number
  default = 0
}

locals {
  shared_dir = "${trimsuffix(var.runbot_workspace_dir, "/")}/shared"
}

resource "terraform_data" "shared" {
  input = local.shared_dir

  provisioner "local-exec" {
    command     = "mkdir -p -- \"$DIR\""
    environment = { DIR = self.input }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "rm -rf -- \"$DIR\""
    environment = { DIR = self.input }
  }
}

output "runbot_capacity" {
  value = var.capacity
}

output "runbot_pool_size" {
  value = var.pool_size
}

output "port_base" {
  value = var.port_base
}

output "shared_dir" {
  value = terraform_data.shared.output
}

output "server_script" {
  value = var.server_script
}
