"""Consumer group coordinator (classic protocol) and committed offsets."""
