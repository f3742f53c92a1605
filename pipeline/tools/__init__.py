"""Offline tools, built on the serving core (`pipeline.serve`), so a photo stylized here and by the
server gets the same pixels; never bundled into a `.mar`.

- `stylize`: the `stylize` command (images, folders, films, animations); `video`, `video_jobs`,
  `video_io`, `frame_batches`, `animations`: films, animated GIF/WebP and folders of frames;
- `describe`: the `describe` command;
- `web`: `make web`, a run's generator as a page that runs in the browser.
"""
