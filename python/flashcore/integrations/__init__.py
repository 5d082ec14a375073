"""Integrations of flashcore with other libraries (import the submodule you need)."""
