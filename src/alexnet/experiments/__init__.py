"""The paper's experiments: §7's ablations (a conv layer removed, no LRN, no overlapping pooling,
one tower, ...) as training arms with a results table, and Fig. 1 (ReLU against tanh, §3.1).

    ablations.py  the named experiments and their arms, run and resumed as one command
    table.py      the results table over seeds
    fig1.py       Fig. 1's four-layer net on CIFAR-10;  fig1_plot.py: its figure
"""
