"""Pixels and batches: decoding, the random streams, splits, batches on the device, erasing.
"""
