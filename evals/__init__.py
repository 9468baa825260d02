"""Frozen-feature evaluations: the protocols that score an encoder without fine-tuning it.

Drivers, each run from the repository root as a module (EVALUATION.md has the full commands):

    python -m evals.knn           weighted kNN of pooled features, train = bank, val = queries (DINO's
                                  protocol; --official_protocol: the official SIGMA eval_knn.py)
    python -m evals.probe         L-BFGS logistic regression on cached features, kNN beside it
    python -m evals.segmentation  unsupervised video object segmentation on DAVIS-2017 / YouTube-VOS
                                  (TimeTuning's clustering and overclustering, mIoU)

`-h` lists each driver's flags and defaults; the launchers are scripts/eval/*.sh.

Library modules (imported by the drivers, by fine-tuning and by pretraining; none runs on its own):

    common              the shared setup: flags, encoder loading, split reading, batched feature
                        extraction over every rank, accounting of unreadable videos, kNN votes
    knn_monitor         the kNN that run_sigma_pretraining.py --eval_every logs beside the loss
    kmeans              batched torch k-means (segmentation, run_sigma_vis.py)
    segmentation_metrics  cluster-to-label matching and IoU of one clip (numpy, pool workers)
    attentive           V-JEPA's attentive probe and the grid of heads trained together
                        (run_class_finetuning.py --probe attentive)
    tasks               SEVERE's multi-label and counting tasks of run_class_finetuning.py
    severe_metrics      Charades mAP and repetition-counting errors (SEVERE)

This file imports nothing, so importing one module of the package loads only what it needs.
"""
