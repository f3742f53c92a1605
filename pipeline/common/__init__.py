"""The lowest stage, what every other may use (it imports none): the image codec, images by path, name
or folder, files written whole, the allocator setting.

- `image_codec`: image decoding, resizing and encoding, the one codec of the server, the tools and training;
- `image_sources`: images named by path or `skimage:<name>`, the images of a folder (`image_files`), style names;
- `files`: `atomic_write`, a file (or folder) that appears whole or not at all;
- `memory`: the process's allocator setting; `cpu`: whether this CPU has native bf16.
"""
