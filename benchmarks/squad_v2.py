"""SQuAD v2.0 on the real dev-v2.0 questions: fine-tune, tune the null-score threshold on held-out articles,
evaluate on others (the split in tasks/qa.py: 21 articles train, 7 tune, 7 evaluate; no SQuAD train set here).

    python benchmarks/squad_v2.py --output-dir runs/squad_v2 --epochs 2 --max-seq-length 256
    python benchmarks/squad_v2.py --output-dir runs/squad_v2 --skip-training     # re-tune and re-score a saved run

Prints and writes `squad_v2.json`: the threshold, the tuning part's scores, and EM/F1 (with HasAns/NoAns)
on the evaluation articles at threshold 0 and at the tuned threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertforge.tasks.qa import (
    SQUAD_V2_EVAL_TITLES,
    SQUAD_V2_TUNE_TITLES,
    agreed_v2_split,
    best_null_threshold,
    read_squad,
    squad_scores,
)
from bertforge.tokenizer import BertTokenizer
from bertforge.training import finetune
from bertforge.training.finetune_loop import TrainSettings, load_task_model, predict_outputs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v2.0.reconstructed.json"


def margins_and_answers(model, task, tokenizer, examples, max_seq_length: int, batch_size: int):
    """Per question: null score − best span score, and the best span's text."""
    features = task.features(examples, tokenizer, max_seq_length=max_seq_length)
    outputs = predict_outputs(model, task, features, pad_id=tokenizer.pad_id, batch_size=batch_size, progress=True)
    nbest = task.nbest(examples, features, outputs)
    margins = {qid: r["null_score"] - (r["spans"][0]["score"] if r["spans"] else float("-inf"))
               for qid, r in nbest.items()}
    answers = {qid: r["spans"][0]["text"] if r["spans"] else "" for qid, r in nbest.items()}
    return margins, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-epoch-eval-questions", type=int, default=None,
                        help="score only the first N tuning questions after each epoch (to pick the epoch; the "
                             "threshold is tuned on all of them afterwards)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--skip-training", action="store_true", help="use the model already in --output-dir/model")
    args = parser.parse_args()

    train, tune, evaluation = agreed_v2_split(read_squad(args.data))
    model_dir = args.output_dir / "model"
    if not args.skip_training:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        train_titles, tune_titles = args.output_dir / "train_titles.txt", args.output_dir / "tune_titles.txt"
        train_titles.write_text("\n".join(sorted({e.title for e in train})) + "\n", encoding="utf-8")
        tune_titles.write_text("\n".join(sorted(SQUAD_V2_TUNE_TITLES)) + "\n", encoding="utf-8")
        finetune.run(model_dir, task="squad_v2", model=args.model,
                     data=finetune.DataSettings(train=args.data, titles=train_titles, validation=[args.data],
                                                eval_titles=tune_titles, max_train_examples=args.max_train_examples,
                                                max_eval_examples=args.max_epoch_eval_questions),
                     inputs=finetune.InputSettings(max_length=args.max_seq_length, stride=args.doc_stride),
                     train=TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                         learning_rate=args.learning_rate, seed=args.seed),
                     threads=args.threads, device=args.device, overwrite=True)
    model, task = load_task_model(model_dir)
    model.to(args.device)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    margins, answers = margins_and_answers(model, task, tokenizer, tune, args.max_seq_length, 64)
    threshold, tune_scores = best_null_threshold(tune, margins, answers)
    margins, answers = margins_and_answers(model, task, tokenizer, evaluation, args.max_seq_length, 64)

    def scored(t: float) -> dict:
        return squad_scores(evaluation, {q: "" if m > t else answers[q] for q, m in margins.items()}, version_2=True)

    result = {"train_questions": len(train), "tune_questions": len(tune), "eval_questions": len(evaluation),
              "eval_articles": sorted(SQUAD_V2_EVAL_TITLES), "null_score_threshold": threshold,
              "tune": tune_scores, "eval_at_threshold_0": scored(0.0), "eval_at_tuned_threshold": scored(threshold),
              "settings": {k: str(v) for k, v in vars(args).items()}}
    (args.output_dir / "squad_v2.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
