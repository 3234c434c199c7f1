"""The BERT encoder, one concept per file: embeddings, attention, layer, pooler, encoder."""

from bertforge.model.encoder import BertModel, BertOutput, padding_mask

__all__ = ["BertModel", "BertOutput", "padding_mask"]
