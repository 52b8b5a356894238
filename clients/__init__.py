"""Clients that speak only the public wire protocol."""
