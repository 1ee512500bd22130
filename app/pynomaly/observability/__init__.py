"""Metrics, heartbeats and logging shared by every component."""
