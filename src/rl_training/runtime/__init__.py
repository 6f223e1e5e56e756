"""Run setup, device resolution and seeding."""
