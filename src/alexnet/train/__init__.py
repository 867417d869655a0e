"""§5 Details of learning: stochastic gradient descent with the paper's momentum, weight decay and
learning-rate schedule, run as a resumable training run.

    run.py          a run folder and its state: new, resumed or fine-tuned run, lock, signals,
                    checkpoints, metrics; `fit` trains one
    loop.py         the step loop: `Trainer`, one epoch of steps, validation
    optim.py        §5's update rule and the learning-rate schedules
    distributed.py  processes under torchrun (DDP) and the two-device split's devices
    metrics.py      metrics.jsonl, metrics.csv and TensorBoard
    finetune.py     §6 fine-tuning from Python, on a store or a plain class-folder tree
"""

from alexnet.train.run import fit, start_or_resume

__all__ = ["fit", "start_or_resume"]
