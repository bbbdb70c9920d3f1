"""Built-in rules (placeholder until filled)."""
