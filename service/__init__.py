"""Run-time translation service. Imports only ctranslate2 and sentencepiece for the model."""
