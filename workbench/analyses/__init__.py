"""Analyses: pure functions `analyse(trace, *, options) -> frozen Result` with `Result.to_json()`.

Each analysis is its own module (or small subpackage) and cites its paper; import the one you need, e.g.
`from workbench.analyses import routes; routes.analyse(trace, position=-1)`.

Results describe themselves (`result.Result`): versioned `to_json()` / `from_json()` and the per-head and
per-token arrays views draw; `registry.read_result(name, data)` turns a bundle's results/<name>.json back into
its result object.
"""
