"""The innermost layer: settings, time, errors, background tasks, HTTP request facts. Imports nothing of ours."""
