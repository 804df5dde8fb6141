"""LiteLLM adapter for thrifty. Not built yet: the core (``thrifty``) is usable directly."""
