"""How thrifty's learned verifier is trained (not part of the installed package)."""
