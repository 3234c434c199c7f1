"""Seeing inside the model: attention maps, position encodings, sentence-vector poolings."""
