"""Logs, metrics, request ids and health: how an operator sees the server. Imports only core."""
