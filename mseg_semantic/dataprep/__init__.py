"""Building the MSeg composite dataset (``mseg data``): download, prepare, relabel and verify the 13 datasets.

The original does this with shell recipes and scripts of ``mseg-api``; here each step is one function (and one
command), exact to the original's pixels, resumable, and safe: outputs are written atomically and a failure stops
the run with the file and reason named.
"""
