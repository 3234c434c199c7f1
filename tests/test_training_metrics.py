"""curves.png: one plotting function for every job; pre-training's curves are chosen from its metrics.jsonl."""

from __future__ import annotations

from bertforge.training import metrics
from bertforge.training.metrics import MetricsLogger

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_pretraining_curves_come_from_the_logged_records(tmp_path, spy_on_plot_curves):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step, loss in ((10, 9.0), (20, 7.5), (30, 6.0)):
        logger.log(step, {"loss": loss}, prefix="train")
    logger.log(20, {"loss": 7.0, "mlm_accuracy": 0.1, "nsp_accuracy": 0.6}, prefix="heldout")
    logger.log(30, {"loss": 6.5, "mlm_accuracy": 0.2, "nsp_accuracy": 0.7}, prefix="heldout")
    drawn = spy_on_plot_curves(metrics)
    path = logger.plot()
    assert path == tmp_path / "curves.png" and path.read_bytes().startswith(PNG_SIGNATURE)
    train, heldout = drawn["losses"]
    assert (train.steps, train.values) == ([10, 20, 30], [9.0, 7.5, 6.0])
    assert (heldout.steps, heldout.values) == ([20, 30], [7.0, 6.5])
    assert [(c.label, c.values) for c in drawn["scores"]] == [("MLM accuracy", [0.1, 0.2]),
                                                               ("NSP accuracy", [0.6, 0.7])]
    assert drawn["score_range"] == (0, 1)


def test_an_empty_log_still_draws_a_png(tmp_path):
    path = MetricsLogger(tmp_path, tensorboard=False).plot()
    assert path.read_bytes().startswith(PNG_SIGNATURE)
