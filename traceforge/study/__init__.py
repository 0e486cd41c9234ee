"""Studies: a matrix of runs (mixes × axes × repeats) and capacity searches, in one command.

    spec.py      the study TOML, validated once (load_study)
    plan.py      cells and the groups that share loaded models
    cells.py     picklable cell / group / search descriptions (what an executor runs)
    executor.py  the Executor interface, LocalExecutor, landing run directories
    runner.py    run_group: how a group's cells run (the replay / simulate code)
    capacity.py  SLO evaluation and the bracketing + bisection search
    engine.py    study.json, locking, resume, phases (prescreen, capacity, grid)
"""
