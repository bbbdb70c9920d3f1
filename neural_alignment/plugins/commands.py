"""Built-in nalign subcommands (placeholder until filled)."""
