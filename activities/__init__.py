"""Activities: all of lockgate's I/O, one module per external system."""
