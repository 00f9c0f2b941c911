"""gencond."""
