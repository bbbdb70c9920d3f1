"""Built-in datasets (placeholder until filled)."""
