"""Built-in loggers (placeholder until filled)."""
