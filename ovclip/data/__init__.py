"""Datasets ovclip reads: the built-in sets, Fashion-MNIST idx files, image folders, captions files."""
