"""Storage backends for captured artifacts (heap profiles and their event JSON)."""
