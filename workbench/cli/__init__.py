"""Command-line interface (`workbench ...`)."""
