"""Adaptation methods, one module per family: decoder adapters, test-time adaptation, ...

Each family exposes a small verb API (``inject`` / ``merge`` for adapters; ``adapt`` / ``reset``
for test-time methods) so a notebook compares methods in one loop.
"""
