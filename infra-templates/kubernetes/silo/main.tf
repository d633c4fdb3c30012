# The silo holds no workload: its namespace records the settings every instance inherits,
# so `kubectl get configmap -n <prefix>-<silo>` shows what a silo is.
resource "kubernetes_namespace_v1" "silo" {
  metadata {
    name = "${var.namespace_prefix}-${var.runbot_silo_name}"

    labels = {
      "app.kubernetes.io/managed-by" = "runbot"
      "runbot.dev/silo"              = var.runbot_silo_name
    }
  }
}

resource "kubernetes_config_map_v1" "settings" {
  metadata {
    name      = "runbot-silo"
    namespace = kubernetes_namespace_v1.silo.metadata[0].name
  }

  data = {
    capacity         = tostring(var.capacity)
    domain           = var.domain
    ingress_class    = var.ingress_class
    namespace_prefix = var.namespace_prefix
    cluster_issuer   = var.cluster_issuer
  }
}
