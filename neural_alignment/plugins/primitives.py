"""Built-in primitives (placeholder until filled)."""
