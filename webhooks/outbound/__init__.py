"""Signed webhooks to the merchant's backend, delivered from the durable outbox."""
