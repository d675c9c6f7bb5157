"""Analyses: pure functions `analyse(trace, *, options) -> frozen Result` with `Result.to_json()`.

Each analysis is its own module (or small subpackage) and cites its paper; import the one you need, e.g.
`from workbench.analyses import routes; routes.analyse(trace, position=-1)`.
"""
