"""`python -m nola.serve`: an OpenAI-compatible server over one base and many adapters (`nola.serve.app`).

The schema (`nola.serve.config`) imports nothing optional; the app needs the `serve` extra.
"""
