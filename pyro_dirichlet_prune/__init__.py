"""Dirichlet pruning of trained convolutional networks, written as a Pyro program."""

__version__ = "0.1.0"
