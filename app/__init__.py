"""The Dash multi-scale attention explorer (import name `workbench.app`), started by `workbench app`.

Built in the app issue; pages are pluggable, figure builders pure, callbacks thin (see DESIGN.md).
"""
