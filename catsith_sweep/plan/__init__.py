"""The sweep planner: `python -m catsith_sweep plan EXP.yaml` (and `run --dry-run`).

- `schedule`: pure scheduler and concurrency simulation (ASHA, median rule, FIFO), no torch or Ray.
- `predict`: measured seconds + the experiment's sweep settings -> expected wall time, compute, counts.
- `calibrate`: a few real training steps and evaluations of the experiment's own trainer.
- `costs`: the price table (`prices.yaml`, editable, `--prices`) and the guide's cost formula.
- `command`: the CLI and its tables.
"""
