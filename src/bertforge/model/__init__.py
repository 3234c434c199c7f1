"""The BERT encoder, one concept per file: embeddings, attention, layer, pooler, encoder."""

from bertforge.model.encoder import BertModel, BertOutput, KVCache, causal_mask, padding_mask
from bertforge.model.packed import Packing
from bertforge.model.pretrained_model import PretrainedModel

__all__ = ["BertModel", "BertOutput", "KVCache", "Packing", "PretrainedModel", "causal_mask", "padding_mask"]
