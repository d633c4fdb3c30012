locals {
  namespace = lower("${var.namespace_prefix}-${var.runbot_instance_id}")
  host      = "pr-${var.runbot_pr_number}.${var.domain}"
  tls       = var.cluster_issuer != ""
  url       = "${local.tls ? "https" : "http"}://${local.host}/"
  image_tag = var.image_tag != "" ? var.image_tag : var.runbot_head_sha

  labels = {
    "app.kubernetes.io/name"       = "runbot-preview"
    "app.kubernetes.io/instance"   = var.runbot_instance_id
    "app.kubernetes.io/managed-by" = "runbot"
  }
  # Free text (branch names) goes into annotations and env values, never into label values.
  annotations = {
    "runbot.dev/repository" = var.runbot_repository
    "runbot.dev/pr-number"  = tostring(var.runbot_pr_number)
    "runbot.dev/head-sha"   = var.runbot_head_sha
    "runbot.dev/head-ref"   = var.runbot_head_ref
  }

  container_environment = merge(var.environment, {
    RUNBOT_ENVIRONMENT_ID = var.runbot_instance_id
    RUNBOT_REPOSITORY     = var.runbot_repository
    RUNBOT_PR_NUMBER      = tostring(var.runbot_pr_number)
    RUNBOT_HEAD_SHA       = var.runbot_head_sha
    RUNBOT_HEAD_REF       = var.runbot_head_ref
    RUNBOT_URL            = local.url
  })
}

# One namespace per environment: destroying it is a complete cleanup.
resource "kubernetes_namespace_v1" "this" {
  metadata {
    name        = local.namespace
    labels      = local.labels
    annotations = local.annotations
  }

  lifecycle {
    precondition {
      condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", local.namespace))
      error_message = "namespace_prefix-runbot_instance_id must form a DNS label of at most 63 characters."
    }
  }
}

resource "kubernetes_deployment_v1" "app" {
  metadata {
    name        = "app"
    namespace   = kubernetes_namespace_v1.this.metadata[0].name
    labels      = local.labels
    annotations = local.annotations
  }

  spec {
    # Suspended environments keep every object but run no pod.
    replicas = var.runbot_suspended ? 0 : 1

    selector {
      match_labels = local.labels
    }

    template {
      metadata {
        labels      = local.labels
        annotations = local.annotations
      }

      spec {
        container {
          name  = "app"
          image = "${var.image}:${local.image_tag}"

          port {
            name           = "http"
            container_port = var.container_port
          }

          dynamic "env" {
            for_each = local.container_environment
            content {
              name  = env.key
              value = env.value
            }
          }

          readiness_probe {
            http_get {
              path = var.health_check_path
              port = "http"
            }
            period_seconds = 5
          }

          resources {
            requests = { # priced in cost.tf
              cpu    = "${local.cpu_request_millicores}m"
              memory = "${local.memory_request_mib}Mi"
            }
            limits = {
              memory = "512Mi"
            }
          }
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "app" {
  metadata {
    name      = "app"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.labels
  }

  spec {
    selector = local.labels

    port {
      name        = "http"
      port        = 80
      target_port = "http"
    }
  }
}

resource "kubernetes_ingress_v1" "app" {
  metadata {
    name      = "app"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.labels
    annotations = local.tls ? {
      "cert-manager.io/cluster-issuer" = var.cluster_issuer
    } : {}
  }

  spec {
    ingress_class_name = var.ingress_class

    rule {
      host = local.host

      http {
        path {
          path      = "/"
          path_type = "Prefix"

          backend {
            service {
              name = kubernetes_service_v1.app.metadata[0].name
              port {
                name = "http"
              }
            }
          }
        }
      }
    }

    dynamic "tls" {
      for_each = local.tls ? [local.host] : []
      content {
        hosts       = [tls.value]
        secret_name = "app-tls"
      }
    }
  }
}
