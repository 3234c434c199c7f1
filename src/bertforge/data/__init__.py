"""Data: reading text tables, corpora and task files; building training examples."""
