"""One widget a module, each with its own CSS."""
