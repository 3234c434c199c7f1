"""bertforge: BERT from scratch — WordPiece, encoder, pre-training, fine-tuning, inference."""

from bertforge.config import PRESETS, BertConfig
from bertforge.model import BertModel, BertOutput
from bertforge.tokenizer import BertTokenizer

__version__ = "0.1.0"
__all__ = ["PRESETS", "BertConfig", "BertModel", "BertOutput", "BertTokenizer", "__version__"]
