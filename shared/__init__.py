"""thrifty core."""
def f() -> int: return 1
