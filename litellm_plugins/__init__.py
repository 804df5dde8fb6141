from thrifty import f

x: str = f()
