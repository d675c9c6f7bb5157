"""The bundle format's name and version: read by the bundle writer and reader and by the JSON export.

Bump SCHEMA_VERSION when a change to manifest.json or the shards would mislead an older reader; readers
refuse bundles newer than the version they know.
"""

SCHEMA_VERSION = 1
FORMAT = "workbench-trace"
MANIFEST = "manifest.json"
