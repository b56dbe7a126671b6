"""Code generation: IR -> readable Python source, run as plain Python or compiled by numba."""
