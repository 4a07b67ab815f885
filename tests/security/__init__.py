"""Adversarial tests: attaching never harms the target, nobody gets in, no secret leaves the app."""
