terraform {
  # Built-ins only (terraform_data, local-exec), so the stack runs on OpenTofu and Terraform
  # without downloading any provider.
  required_version = ">= 1.6.0"
}

locals {
  shared_dir = "${trimsuffix(var.runbot_workspace_dir, "/")}/shared"
}

# The shared directory outlives every per-run working copy of this template; destroying the
# silo stops any leftover instance server and removes the directory entirely.
resource "terraform_data" "shared" {
  input = {
    dir    = local.shared_dir
    script = "${local.shared_dir}/server.py"
  }

  lifecycle {
    precondition {
      condition     = var.port_base + var.capacity - 1 <= 65535
      error_message = "port_base + capacity - 1 must be a valid TCP port (<= 65535)."
    }
  }

  provisioner "local-exec" {
    command = "mkdir -p -- \"$RUNBOT_SHARED_DIR\""
    environment = {
      RUNBOT_SHARED_DIR = self.input.dir
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "if [ -f \"$SCRIPT\" ]; then python3 \"$SCRIPT\" stop-all; fi && rm -rf -- \"$RUNBOT_SHARED_DIR\""
    environment = {
      SCRIPT            = self.input.script
      RUNBOT_SHARED_DIR = self.input.dir
    }
  }
}

# Separate from "shared" so a new server.py or runbot_app.py is copied in place on re-apply;
# replacing "shared" would wipe every instance's files. server.py imports runbot_app.py, which
# is therefore copied first.
resource "terraform_data" "server_script" {
  triggers_replace = {
    script = terraform_data.shared.output.script
    sha256 = filesha256("${path.module}/server.py")
    app    = filesha256("${path.module}/runbot_app.py")
  }

  provisioner "local-exec" {
    command = "for f in runbot_app.py server.py; do cp -- \"$SOURCE/$f\" \"$TARGET/$f.tmp\" && mv -f -- \"$TARGET/$f.tmp\" \"$TARGET/$f\" || exit 1; done"
    environment = {
      SOURCE = abspath(path.module)
      TARGET = terraform_data.shared.output.dir
    }
  }
}

# Its random id is the secret: stable across re-applies, new only if the silo is recreated.
resource "terraform_data" "admin_token" {
  input = var.runbot_silo_name
}
