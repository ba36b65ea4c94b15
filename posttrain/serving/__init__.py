"""``posttrain serve``: an OpenAI-compatible chat server with request batching (``server.py``)."""
