"""Pipelines that join data/, fusion/ and detection/. They hold orchestration only: no model or metric logic."""
