"""Train and score one binary classifier (one label, one resolution, one architecture), as the paper did.

The paper's recipe is the default (``recipe='fastai07'``, ``init='imagenet'``): fastai 0.7's head and
class-weighted cross-entropy with weight = negatives/positives of the whole subsample (Table 1's), SGD
with momentum 0.9 at a fixed 5e-4, batch size 8, 3 epochs, all layers trained, fastai 0.7's transforms
and TTA. Speed comes from the loader backends (pixels decoded once) and ``TrainStep`` (channels-last, AMP).

One job per module: ``folder`` (the run folder: refuse, resume, reuse, overwrite; decided before anything is
written), ``parts`` (data, subsample, model, step and loaders), ``loop`` (epochs, checkpoints, prediction),
``record`` (predictions.npz and metrics.json) and ``run`` (``run_training``, the outline). The settings are
``cxr_fast.schema.run.RunConfig``.
"""

from cxr_fast.train.run import run_training

__all__ = ["run_training"]
