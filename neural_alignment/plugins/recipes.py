"""Built-in recipes (placeholder until filled)."""
