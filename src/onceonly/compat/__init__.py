"""Other libraries' names over onceonly; see ``onceonly.compat.powertools``."""
