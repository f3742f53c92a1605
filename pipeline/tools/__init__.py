"""Offline tools: `python -m pipeline stylize` (images, folders, films, animations), and `describe`.
Built on the serving core (`pipeline.serve`), so a photo stylized here and
by the server gets the same pixels; never bundled into a `.mar`."""
