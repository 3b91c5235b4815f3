"""Sweeps around the EM loop (loop-gain maps, fidelity curve, cobweb, selection ablation): many stage-03
configurations, each a cell keyed by its resolved parameters, with its table and figure."""
