"""The statistics of a comparison: intervals and verdicts over seeds, the image-level bootstrap,
power, and question 2's attention measures.
"""
