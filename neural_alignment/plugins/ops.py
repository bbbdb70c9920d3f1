"""Built-in ops (placeholder until filled)."""
