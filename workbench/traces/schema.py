"""The bundle format's name and version: read by the bundle writer and reader and by the JSON export.

Bump SCHEMA_VERSION when a change to manifest.json or the shards would mislead an older reader; readers
refuse bundles newer than the version they know.
"""

# 2: one shard per stack and xxh3_128 checksums (1: one shard per layer, sha256); this version reads both.
SCHEMA_VERSION = 2
FORMAT = "workbench-trace"
MANIFEST = "manifest.json"
