"""AIN job suite: curation, training, evaluation and the VDR embedding track as Slurm stages.

A regular package (not a namespace one) so that a job's code snapshot on PYTHONPATH shadows the
checkout completely instead of being merged with it (see ain.slurm.snapshot).
"""
