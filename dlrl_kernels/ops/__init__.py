"""One op per file: validation, dispatch, the autograd.Function and the reference twin."""
