"""The pieces of ``edgexfer finetune``: runtime set-up (device, AMP, DDP), the training loop with its
feature cache, and the metrics report. :mod:`edgexfer.stages.finetune` puts them together."""
