"""What every orderflow service needs and nothing domain-specific."""
