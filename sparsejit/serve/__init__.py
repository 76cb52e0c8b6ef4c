"""The REST server (``sparsejit serve``) and the benchmark CLI (``sparsejit benchmark``).

``sparsejit.serve.app.create_app(config)`` builds the FastAPI app; ``sparsejit.serve.cli.main`` is the
console script. Submodules are imported on use, so importing this package stays cheap.
"""
