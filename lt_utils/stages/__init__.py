"""The four stages of the study, one module per notebook (01_data_prep ... 04_analysis).

Each holds its stage's validated config and the logic its notebook calls; a stage may use
the core, the world, the paper adapters and the report code, never the reverse.
"""
