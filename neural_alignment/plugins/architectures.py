"""Built-in architectures (placeholder until filled)."""
