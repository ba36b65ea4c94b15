"""Pipelines: a YAML of named stages run in dependency order, each cached in a content-keyed folder."""
