"""Security test material: the malformed-input corpus shared by unit and integration tests."""
