"""The configuration, imported one way: ``schema`` (the JSON schema, ``ConfigError``) at the
bottom; ``arms``, ``stage_settings`` and ``model_checks`` above it, each importing only what is
below; ``validate`` on top, the one entry point that composes them.
"""
