"""From webhooks to desired state: PR facts, the pure decision, and applying it."""
