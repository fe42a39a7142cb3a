"""Converters from other projects' released checkpoints to foley model folders.

``foley convert mmaudio`` (:mod:`foley.convert.mmaudio`) builds a foley model folder that
computes the same function as MMAudio's reference implementation from its public files.
"""
