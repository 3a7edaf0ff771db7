"""Delivery adapters: one interface, each channel with its own idea of transient and permanent."""
