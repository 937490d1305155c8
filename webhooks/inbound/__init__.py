"""CamPay's callback: signature, source allowlist, provider verification, then the one update path."""
