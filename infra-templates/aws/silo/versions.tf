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
      "managed-by"  = "runbot"
      "runbot:silo" = var.runbot_silo_name
    }
  }
}
