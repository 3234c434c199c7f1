"""`bertforge demo`: semantic search over built-in sentences with a real pre-trained checkpoint.

Offline: it uses the packaged all-MiniLM-L6-v2 (a 6-layer BERT) and prints each query's nearest
sentences by cosine similarity of mean-pooled vectors, next to a random-weights model of the same
shape — what pre-training buys, in one screen.
"""

from __future__ import annotations

import torch

from bertforge.checkpoint import load_model
from bertforge.inference.embed import embed_texts
from bertforge.model import BertModel
from bertforge.pretrained import DEFAULT_MODEL, resolve_model
from bertforge.tokenizer import BertTokenizer

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was sleeping in the sun by the window.",
    "Dogs love to chase balls in the park.",
    "The stock market fell sharply after the announcement.",
    "Shares dropped when the company reported weak earnings.",
    "Investors are worried about rising interest rates.",
    "She scored the winning goal in the final minute.",
    "The team celebrated its championship victory.",
    "The football match ended in a draw.",
    "Bake the bread at 220 degrees for thirty minutes.",
    "Add a pinch of salt to the boiling pasta water.",
    "This soup recipe needs fresh tomatoes and basil.",
    "The telescope captured images of a distant galaxy.",
    "Astronauts repaired the space station's solar panel.",
    "A new planet was discovered orbiting a nearby star.",
    "The patient was prescribed antibiotics for the infection.",
    "Regular exercise lowers the risk of heart disease.",
    "The train to Paris was delayed by two hours.",
    "Our flight was cancelled because of the storm.",
    "He forgot his umbrella and got soaked in the rain.",
]
QUERIES = [
    "Where is my pet cat?",
    "Why did share prices go down?",
    "Who won the game?",
    "How do I cook dinner?",
    "News about outer space",
    "My travel plans were disrupted.",
]


def run(model: str = DEFAULT_MODEL, top_k: int = 3) -> float:
    """Nearest-neighbour search over built-in sentences, pre-trained vs random weights.

    Args:
        model: A BERT model directory, or all-minilm-l6-v2 (the packaged checkpoint, the default).
        top_k: Neighbours shown per query.

    Returns the fraction of queries whose best match is on the intended topic (pre-trained model).
    """
    directory = resolve_model(model)
    tokenizer = BertTokenizer.from_pretrained(directory)
    trained = load_model(directory)
    torch.manual_seed(0)
    untrained = BertModel(trained.config).eval()
    # Topic of each sentence: consecutive groups as listed above.
    topics = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6]
    query_topics = [0, 1, 2, 3, 4, 6]
    print(f"model: {directory} ({trained.num_parameters():,} parameters)\n")
    scores = {}
    for name, bert in (("pre-trained", trained), ("random init", untrained)):
        docs = embed_texts(bert, tokenizer, SENTENCES, pooling="mean", normalize=True).vectors
        queries = embed_texts(bert, tokenizer, QUERIES, pooling="mean", normalize=True).vectors
        similarity = torch.from_numpy(queries @ docs.T)  # [Q, N] cosine
        best = similarity.topk(top_k, dim=1)
        hits = sum(topics[int(best.indices[q, 0])] == query_topics[q] for q in range(len(QUERIES)))
        scores[name] = hits / len(QUERIES)
        if name == "pre-trained":
            for q, query in enumerate(QUERIES):
                print(f"query: {query}")
                for score, index in zip(best.values[q].tolist(), best.indices[q].tolist(), strict=True):
                    print(f"   {score:.3f}  {SENTENCES[index]}")
                print()
    for name, score in scores.items():
        print(f"top-1 on topic, {name}: {score:.0%}")
    return scores["pre-trained"]
