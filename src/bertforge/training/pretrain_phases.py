"""`bertforge pretrain --pair-phase S`: one job, two phases. A masked-LM phase on packed rows learns words
fastest; a second phase on sentence pairs with NSP, started from its model, teaches what sentence-pair tasks
read ([CLS], the two segments). The BERT paper's own two phases (length 128, then 512: Appendix A.2) are
the same mechanism, `--init-from`, written out by hand.

The folder: the first phase is an ordinary run in output_dir/phase1 (its model in phase1/model), the second
an ordinary run in output_dir, so output_dir/model is the final model as after a one-phase run. Each phase
keeps its own checkpoints; `--resume` skips a first phase that has finished (phase1/finished.json) and
continues the second where it stopped.
"""

from __future__ import annotations

import dataclasses
import json

from bertforge.files import write_text_atomic
from bertforge.training.pretrain_settings import (
    CorpusSettings,
    ModelSettings,
    OptimSettings,
    PretrainConfig,
    ReportSettings,
    RunSettings,
)
from bertforge.training.run_folder import PRETRAIN_FILES, check_run_folder

FIRST_PHASE = "phase1"
FINISHED = "finished.json"  # written into the first phase's folder when it has exported its model


def phase_configs(corpus: CorpusSettings, job: RunSettings, model: ModelSettings, optim: OptimSettings,
                  report: ReportSettings) -> tuple[PretrainConfig, PretrainConfig]:
    """The two ordinary runs a two-phase job is made of, built from the groups as the user gave them (fields
    left unset stay unset, for the recipe to fill). Budget and steps are split by the share; the second phase
    reads pairs, unpacked, with NSP, from the first's model at half the first's peak learning rate."""
    share, first_dir = corpus.pair_phase, job.output_dir / FIRST_PHASE
    first_steps = second_steps = None
    if optim.steps is not None:
        second_steps = max(1, round(optim.steps * share))
        first_steps = max(1, optim.steps - second_steps)
    minutes = (None, None) if not job.max_minutes else (job.max_minutes * (1 - share), job.max_minutes * share)
    one_phase = dataclasses.replace(corpus, pair_phase=0.0)
    first = PretrainConfig(one_phase, dataclasses.replace(job, output_dir=first_dir, max_minutes=minutes[0],
                                                          overwrite=False),
                           model, dataclasses.replace(optim, steps=first_steps), report)
    second = PretrainConfig(
        dataclasses.replace(one_phase, objective="mlm_nsp", packing=False),
        # resume: the folder already holds phase1/; with no checkpoint of its own the phase starts at step 0
        dataclasses.replace(job, max_minutes=minutes[1], resume=True, overwrite=False),
        dataclasses.replace(model, init_from=first_dir / "model"),
        dataclasses.replace(optim, steps=second_steps, learning_rate=first.optim.learning_rate / 2), report)
    return first, second


def train_in_two_phases(corpus: CorpusSettings, job: RunSettings, model: ModelSettings, optim: OptimSettings,
                        report: ReportSettings):
    """Run (or resume) both phases; the second phase's PretrainResult (or the first's, if it stopped on a
    non-finite loss). The groups as the user gave them, as `phase_configs` takes them."""
    from bertforge.training.pretrain import train

    check_run_folder(job.output_dir, resume=job.resume, overwrite=job.overwrite, inputs=(corpus.data, model.init_from),
                     run_files=(*PRETRAIN_FILES, FIRST_PHASE))
    first, second = phase_configs(corpus, job, model, optim, report)
    finished = first.job.output_dir / FINISHED
    if job.resume and finished.is_file():
        print(f"phase 1 of 2 finished earlier ({first.job.output_dir}); resuming phase 2")
    else:
        print(f"phase 1 of 2: masked LM{' on packed rows' if first.corpus.packing else ''} in {first.job.output_dir}"
              + (f", {first.job.max_minutes:.1f} min" if first.job.max_minutes else ""))
        result = train(first)
        if result.stopped == "nan":
            return result
        write_text_atomic(finished, json.dumps({"step": result.step, "stopped": result.stopped}) + "\n")
    print(f"phase 2 of 2: sentence pairs with NSP from {second.model.init_from}, peak learning rate "
          f"{second.optim.learning_rate:g}" + (f", {second.job.max_minutes:.1f} min" if second.job.max_minutes else ""))
    return train(second)
