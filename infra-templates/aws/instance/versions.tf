terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "managed-by"         = "runbot"
      "runbot:environment" = var.runbot_instance_id
      "runbot:repository"  = var.runbot_repository
      "runbot:pr"          = tostring(var.runbot_pr_number)
    }
  }
}
