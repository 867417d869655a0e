"""What a person looks at: the paper's figures (§6.1: Fig. 3 kernels, Fig. 4 top-5 and neighbours),
training curves, and a run's HTML report.

    paper.py          `alexnet figures`: the paper's figures for a checkpoint and a store
    figures.py        the figures themselves (builders and PNG writers)
    curves.py         training curves by epoch
    page.py           `alexnet report`: one self-contained HTML page of a run
    page_sections.py  the page's sections;  page_figures.py: its own figures
    run_files.py      reading a run folder that others may write into
    canvas.py         the canvas every figure is drawn on
"""
