terraform {
  # Built-ins only (terraform_data, local-exec), so the stack runs on OpenTofu and Terraform
  # without downloading any provider.
  required_version = ">= 1.6.0"
}

locals {
  port         = var.port_base + var.runbot_slot
  instance_dir = "${trimsuffix(var.shared_dir, "/")}/${var.runbot_instance_id}"

  # Everything a provisioner needs travels in `environment`, never in the command string: the
  # head ref is attacker-controlled and may hold quotes, `$()`, `;` or newlines.
  server_env = {
    SCRIPT              = "${trimsuffix(var.shared_dir, "/")}/server.py"
    RUNBOT_INSTANCE_ID  = var.runbot_instance_id
    RUNBOT_INSTANCE_DIR = local.instance_dir
    RUNBOT_BIND_HOST    = var.bind_host
    RUNBOT_PORT         = tostring(local.port)
  }

  page_json = jsonencode({
    repository  = var.runbot_repository
    pr_number   = var.runbot_pr_number
    head_sha    = var.runbot_head_sha
    head_ref    = var.runbot_head_ref
    instance_id = var.runbot_instance_id
    greeting    = var.greeting
  })

  # The repository's own app runs when runbot gives a source directory; a new head SHA then
  # restarts it. Without one (or without a command in it) the page server runs, and a new SHA
  # only rewrites page.json.
  has_source = var.runbot_source_dir != ""
  app_trigger = {
    source        = var.runbot_source_dir
    head_sha      = local.has_source ? var.runbot_head_sha : ""
    start         = local.has_source ? var.start : ""
    ready_timeout = local.has_source ? tostring(var.ready_timeout) : ""
  }

  url_host   = length(regexall(":", var.bind_host)) > 0 ? "[${var.bind_host}]" : var.bind_host
  direct_url = "http://${local.url_host}:${local.port}/"
  # Through the silo's ingress when it has one (silos applied before it existed have none).
  url = var.ingress_url == "" ? local.direct_url : "${trimsuffix(var.ingress_url, "/")}/${var.runbot_instance_id}/"
}

# The instance directory. Its destroy also stops the server (idempotent) so nothing survives
# even if a crashed apply never recorded terraform_data.server in state.
resource "terraform_data" "files" {
  input            = local.server_env
  triggers_replace = local.server_env

  provisioner "local-exec" {
    command     = "mkdir -p -- \"$RUNBOT_INSTANCE_DIR\""
    environment = self.input
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "if [ -f \"$SCRIPT\" ]; then python3 \"$SCRIPT\" stop; fi && rm -rf -- \"$RUNBOT_INSTANCE_DIR\""
    environment = self.input
  }
}

# The page data; the server reads it on every request, so a new SHA only rewrites this file.
# local-exec runs only at creation, hence the replacement on every change.
resource "terraform_data" "page" {
  triggers_replace = {
    dir  = terraform_data.files.output.RUNBOT_INSTANCE_DIR
    page = local.page_json
  }

  provisioner "local-exec" {
    command = "python3 \"$SCRIPT\" write-page"
    environment = merge(local.server_env, {
      RUNBOT_PAGE_JSON = local.page_json
    })
  }
}

# The instance's copy of the PR's source (the source directory is read-only and shared by
# every environment at that commit). Kept while suspended; "" removes the copy.
resource "terraform_data" "source" {
  triggers_replace = {
    dir      = terraform_data.files.output.RUNBOT_INSTANCE_DIR
    source   = var.runbot_source_dir
    head_sha = local.app_trigger.head_sha
  }

  provisioner "local-exec" {
    command = "python3 \"$SCRIPT\" copy-source"
    environment = merge(local.server_env, {
      RUNBOT_SOURCE_DIR = var.runbot_source_dir
    })
  }
}

# The running app or page server: absent while suspended, so suspending stops it and waking
# starts it while the files above stay.
resource "terraform_data" "server" {
  count = var.runbot_suspended ? 0 : 1

  input            = terraform_data.files.output
  triggers_replace = merge(terraform_data.files.output, local.app_trigger)

  # The start command and the Procfile are the repository's: they reach the app's `sh -c`
  # through the environment only.
  provisioner "local-exec" {
    command = "python3 \"$SCRIPT\" start"
    environment = merge(self.input, {
      RUNBOT_SOURCE_DIR    = var.runbot_source_dir
      RUNBOT_START         = var.start
      RUNBOT_READY_TIMEOUT = tostring(var.ready_timeout)
    })
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "if [ -f \"$SCRIPT\" ]; then python3 \"$SCRIPT\" stop; fi"
    environment = self.input
  }

  depends_on = [terraform_data.page, terraform_data.source]
}

# Where the silo's ingress finds the instance and whether it sleeps. Written after the server
# is up (and rewritten once it is stopped), so the ingress proxies only to a started app and
# shows its "waking up" page while a sleeping one starts. The directory's destroy removes it.
resource "terraform_data" "route" {
  triggers_replace = {
    dir       = terraform_data.files.output.RUNBOT_INSTANCE_DIR
    port      = local.port
    host      = var.bind_host
    suspended = var.runbot_suspended
  }

  provisioner "local-exec" {
    command = "python3 \"$SCRIPT\" write-route"
    environment = merge(local.server_env, {
      RUNBOT_SUSPENDED = tostring(var.runbot_suspended)
    })
  }

  depends_on = [terraform_data.server]
}
