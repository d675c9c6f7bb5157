"""Classifiers trained on trace features (import name `workbench.probes`): Lookback Lens, GNN detectors.

Built in the probes issue; this package imports `workbench`, never the app.
"""
