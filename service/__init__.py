"""Run-time translation service. Imports only ctranslate2 and sentencepiece for the model."""

# The one version number: the package metadata (pyproject.toml), the OpenAPI document and
# translation_build_info all read it from here.
__version__ = "0.1.0"
