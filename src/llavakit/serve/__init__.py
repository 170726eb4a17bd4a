"""``llava serve``: an OpenAI-compatible HTTP API with dynamic batching and a web chat page (the ``[serve]`` extra).

``app.create_app(pipeline, ServeConfig(...))`` builds the FastAPI app; ``command.serve`` is the CLI's body.
"""
