"""Plain NumPy twins of gdfast's C kernels.

The same math written for reading: the tests hold the kernels to these, and
the benchmarks measure the kernels against them.
"""
