"""The BERT encoder, one concept per file: embeddings, attention, layer, pooler, encoder."""

from bertforge.model.encoder import BertModel, BertOutput, KVCache, causal_mask, padding_mask

__all__ = ["BertModel", "BertOutput", "KVCache", "causal_mask", "padding_mask"]
