"""Built-in backends (placeholder until filled)."""
