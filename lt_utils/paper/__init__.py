"""Adapters that only the paper-scale path needs: real text corpora, pretrained weights, vLLM,
LLM teachers behind an API, cluster entry points, the GPU check and the cost estimate.

They build on the core; the core never imports them.
"""
