terraform {
  # Built-ins only (terraform_data, local-exec), so the stack runs on OpenTofu and Terraform
  # without downloading any provider.
  required_version = ">= 1.6.0"
}

locals {
  shared_dir   = "${trimsuffix(var.runbot_workspace_dir, "/")}/shared"
  ingress_port = var.ingress_port == 0 ? var.port_base - 1 : var.ingress_port
  url_host     = length(regexall(":", var.bind_host)) > 0 ? "[${var.bind_host}]" : var.bind_host
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
    precondition {
      condition     = local.ingress_port >= 1024 && (local.ingress_port < var.port_base || local.ingress_port >= var.port_base + var.capacity)
      error_message = "the ingress port (ingress_port, or port_base - 1 when it is 0) must be 1024 or more and outside the instance ports port_base .. port_base + capacity - 1: choose another ingress_port."
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
    app     = filesha256("${path.module}/runbot_app.py")
    ingress = filesha256("${path.module}/ingress.py")
  }

  provisioner "local-exec" {
    command = "for f in runbot_app.py ingress.py server.py; do cp -- \"$SOURCE/$f\" \"$TARGET/$f.tmp\" && mv -f -- \"$TARGET/$f.tmp\" \"$TARGET/$f\" || exit 1; done"
    environment = {
      SOURCE = abspath(path.module)
      TARGET = terraform_data.shared.output.dir
    }
  }
}

# The silo's one ingress (ingress.py): every environment's URL goes through it. Restarted when
# its script, address, runbot's API URL or the silo token change (a rotation); the token itself
# reaches it through `environment` only, and only its hash is in the state.
resource "terraform_data" "ingress" {
  input = {
    RUNBOT_SHARED_DIR   = terraform_data.shared.output.dir
    RUNBOT_INGRESS_HOST = var.bind_host
    RUNBOT_INGRESS_PORT = tostring(local.ingress_port)
    SCRIPT              = "${terraform_data.shared.output.dir}/ingress.py"
  }
  triggers_replace = {
    script   = terraform_data.server_script.triggers_replace.ingress
    host     = var.bind_host
    port     = local.ingress_port
    api      = var.runbot_api_url
    token    = sha256(var.runbot_silo_token)
    interval = tostring(var.report_interval)
    silo     = var.runbot_silo_name
  }

  provisioner "local-exec" {
    command = "python3 \"$SCRIPT\" start"
    environment = merge(self.input, {
      RUNBOT_SILO_NAME       = var.runbot_silo_name
      RUNBOT_API_URL         = var.runbot_api_url
      # nonsensitive() only so a failed start's message is not suppressed: runbot scrubs the
      # token from every line of the run's log, and it is never printed.
      RUNBOT_SILO_TOKEN      = nonsensitive(var.runbot_silo_token)
      RUNBOT_REPORT_INTERVAL = tostring(var.report_interval)
    })
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "if [ -f \"$SCRIPT\" ]; then python3 \"$SCRIPT\" stop; fi"
    environment = self.input
  }

  depends_on = [terraform_data.server_script]
}

# Its random id is the secret: stable across re-applies, new only if the silo is recreated.
resource "terraform_data" "admin_token" {
  input = var.runbot_silo_name
}
