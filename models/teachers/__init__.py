"""Architectures of the public single-weather networks used as teachers of the weather student.

Each is written here from its paper (and checked against the shapes of the authors' released
weights, ``../shared/weights/teachers/``): training only, never served or committed with weights.
Like the rest of ``models/``, these files only define networks: they read no files.
"""
